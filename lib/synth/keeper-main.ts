/**
 * The keeper process's entry (keeper-link.ts and keeper-pool.ts start it,
 * detached):
 *   keeper-main.js RUN_DIR   serves that session at once; stdout and stderr
 *                            go to the run directory's keeper.log;
 *   keeper-main.js --spare   (forked, with an IPC channel) loads everything,
 *                            says `ready`, and waits for `{ take: RUN_DIR }`;
 *                            then it serves that session, logs to its
 *                            keeper.log, answers `taken` (or `failed`) and
 *                            lets go of the channel. A spare whose server goes
 *                            away before that exits.
 * A start that fails says why in keeper.log and exits 1.
 */
import { openSync, writeSync } from 'node:fs';
import path from 'node:path';
import { ImageKeeper, logTo } from './keeper.js';
import { KEEPER_LOG } from './keeper-wire.js';

function failure(err: unknown): { code: unknown; error: string; stack?: string } {
  return {
    code: (err as { code?: unknown }).code,
    error: err instanceof Error ? err.message : String(err),
    ...(err instanceof Error && err.stack ? { stack: err.stack } : {}),
  };
}

if (process.argv[2] === '--spare' && process.send) {
  process.on('disconnect', () => process.exit(0)); // the server went away before handing a session over
  process.on('message', (m: { take?: unknown }) => {
    if (typeof m?.take !== 'string') return;
    const dir = m.take;
    process.removeAllListeners('disconnect');
    let fd = 2;
    try {
      fd = openSync(path.join(dir, KEEPER_LOG), 'a');
    } catch {
      // no run directory to log into: the failure below says so to the server
    }
    logTo(fd);
    ImageKeeper.start(dir).then(
      () => {
        process.send!({ taken: true });
        process.disconnect();
      },
      (err: unknown) => {
        writeSync(fd, JSON.stringify({ event: 'keeperFailed', ...failure(err) }) + '\n');
        process.send!({ failed: failure(err) }, () => process.exit(1));
      },
    );
  });
  process.send({ ready: true });
} else {
  const dir = process.argv[2];
  if (!dir) {
    process.stderr.write('usage: keeper-main.js RUN_DIR | --spare\n');
    process.exit(2);
  }
  try {
    await ImageKeeper.start(dir);
  } catch (err) {
    process.stderr.write(JSON.stringify({ event: 'keeperFailed', ...failure(err) }) + '\n');
    process.exit(1);
  }
}
