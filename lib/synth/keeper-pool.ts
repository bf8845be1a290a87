/**
 * A spare keeper process, started ahead of need, so that starting one does
 * not lie on a session's path to its first response: on this 2-CPU TCG host
 * spawning a keeper and loading its modules put about 0.5 s before the VM
 * could resume (docs/DESIGN-NOTES.md). The server keeps one spare; a
 * session takes it (`take`), and the next spare is started a little later,
 * off the busy moments of a session's start. The spare exits if the server
 * goes away before handing it a session.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { compiledModule } from '../core/compiled.js';
import { VmsynthError } from '../core/errors.js';

/** After a take, the next spare starts this much later (the session that took one is starting). */
const NEXT_SPARE_MS = 3000;

/** The keeper process's entry module (keeper-main.ts), compiled. */
export function keeperMain(): string {
  return fileURLToPath(compiledModule(import.meta.url, 'synth/keeper-main.js', 'keeper'));
}

interface Spare {
  child: ChildProcess;
  ready: Promise<boolean>;
}

type Answer = { taken: true } | { failed: { code?: unknown; error?: string } };

export class KeeperPool {
  private spare: Spare | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  /** Starts a spare unless one runs. */
  warm(): void {
    if (this.closed || this.spare) return;
    const child = fork(keeperMain(), ['--spare'], {
      detached: true,
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
      execArgv: [],
    });
    child.unref();
    child.channel?.unref();
    const ready = new Promise<boolean>((resolve) => {
      child.once('message', (m: { ready?: boolean }) => resolve(m?.ready === true));
      child.once('exit', () => resolve(false));
      child.once('error', () => resolve(false));
    });
    const spare = { child, ready };
    child.once('exit', () => {
      if (this.spare === spare) this.spare = null;
    });
    this.spare = spare;
  }

  /**
   * Hands run directory `dir` (its keeper spec written) to the spare, if one is ready: resolves
   * with its pid once it serves the session; null when no spare was ready (start one cold).
   */
  async take(dir: string): Promise<number | null> {
    const s = this.spare;
    if (!s || !(await s.ready) || s.child.exitCode !== null || !s.child.connected) return null;
    this.spare = null;
    this.later();
    const answer = await new Promise<Answer | null>((resolve) => {
      s.child.once('message', (m: Answer) => resolve(m));
      s.child.once('exit', () => resolve(null));
      s.child.send({ take: dir });
    });
    if (answer && 'taken' in answer) return s.child.pid ?? null;
    const f = answer?.failed;
    const code = f?.code === 'VMS_NO_FUSE' || f?.code === 'VMS_FUSE_MOUNT' ? f.code : 'VMS_FUSE_MOUNT';
    throw new VmsynthError(code, `the keeper did not start: ${f?.error ?? 'it exited'} (log: ${dir}/keeper.log)`);
  }

  private later(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.warm();
    }, NEXT_SPARE_MS);
    this.timer.unref();
  }

  /** Ends the spare (the server stops). */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.spare?.child.kill('SIGTERM');
    this.spare = null;
  }
}
