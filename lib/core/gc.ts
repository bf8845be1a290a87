/**
 * Giving memory back at once. A connection that buffered a large frame
 * (a manifest of up to 512 MiB) and ended leaves it to the garbage
 * collector, which runs when JavaScript next allocates enough: on an idle
 * server, measured, not for over a minute. collectSoon() runs a full
 * collection shortly after such an end instead (at most once a second), so
 * the frame's memory goes back to the system within a second. The collector
 * is reached through V8's --expose-gc, turned on at run time; where that is
 * refused, nothing happens and the collector runs when it would have anyway.
 */
import v8 from 'node:v8';
import vm from 'node:vm';

let gc: (() => void) | null | undefined;
let timer: NodeJS.Timeout | null = null;
let last = 0;

function collector(): (() => void) | null {
  if (gc !== undefined) return gc;
  try {
    v8.setFlagsFromString('--expose-gc');
    gc = vm.runInNewContext('gc') as () => void;
  } catch {
    gc = null;
  }
  return gc;
}

/** Runs a full garbage collection soon (after the current turn of the event loop; at most once a second). */
export function collectSoon(): void {
  if (timer) return;
  const wait = Math.max(50, last + 1000 - Date.now());
  timer = setTimeout(() => {
    timer = null;
    last = Date.now();
    collector()?.();
  }, wait);
  timer.unref();
}
