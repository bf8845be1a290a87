/**
 * Ctrl-C handling for the benches: the first SIGINT/SIGTERM aborts the run so
 * its cleanup (Scope) runs; a second exits at once.
 */
import { VmsynthError } from '../../lib/core/errors.js';

/**
 * First SIGINT/SIGTERM aborts `controller` (cleanup runs); a second exits at
 * once (the next run removes the leftovers). Returns the function that
 * removes the handlers.
 */
export function onSignals(controller: AbortController, benchName: string): () => void {
  let count = 0;
  const handler = (sig: NodeJS.Signals) => {
    if (++count > 1) process.exit(130);
    process.stderr.write(`${benchName} bench: ${sig}: cleaning up (send it again to exit at once)\n`);
    controller.abort(new VmsynthError('VMS_INTERRUPTED', `interrupted by ${sig}`));
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}
