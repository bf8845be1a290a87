/**
 * The keeper process's entry: `node keeper-main.js RUN_DIR` (keeper-link.ts
 * starts it detached). Its stdout and stderr go to the run directory's
 * keeper.log; a start that fails says why there and exits 1.
 */
import { ImageKeeper } from './keeper.js';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: keeper-main.js RUN_DIR\n');
  process.exit(2);
}
try {
  await ImageKeeper.start(dir);
} catch (err) {
  process.stderr.write(
    JSON.stringify({
      event: 'keeperFailed',
      code: (err as { code?: unknown }).code,
      error: err instanceof Error ? err.message : String(err),
      stack: (err as Error).stack,
    }) + '\n',
  );
  process.exit(1);
}
