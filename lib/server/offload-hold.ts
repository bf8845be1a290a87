/**
 * Offload requests held while a handoff stops a session's VM: a new request
 * waits here instead of reaching the app, so none runs between the last pass
 * and the stop. If the handoff fails they run here after all; if it succeeds
 * they are dropped, and the client sends them again to the next cloudlet
 * (it has no reply for them). Pure but for a timer.
 */
import { VmsynthError } from '../core/errors.js';

export class OffloadHold {
  private held: Array<() => void> | null = null;

  /** Whether requests are being held now. */
  get holding(): boolean {
    return this.held !== null;
  }

  /** While holding: keeps `run` for later and returns true. */
  hold(run: () => void): boolean {
    if (!this.held) return false;
    this.held.push(run);
    return true;
  }

  /** Holds new requests from now on, and resolves once `running()` is 0 (rejects after `ms`). */
  async start(running: () => number, ms: number, gone: () => boolean): Promise<void> {
    this.held ??= [];
    const until = performance.now() + ms;
    while (running() > 0) {
      if (performance.now() > until || gone())
        throw new VmsynthError('VMS_HANDOFF', `offload requests still ran after ${ms} ms: the VM was not stopped`, {
          details: { step: 'quiesce', running: running() },
        });
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** The handoff failed: what was held runs now. */
  release(): void {
    const held = this.held ?? [];
    this.held = null;
    for (const run of held) run();
  }
}
