/**
 * Helpers for the benches' hand-written SVG charts: axis steps, coordinates
 * and XML escaping.
 */

/** A round axis step (1, 2 or 5 times a power of ten) giving about five ticks up to `max`. */
export function niceStep(max: number): number {
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return ([1, 2, 5, 10].find((m) => m * mag >= raw) ?? 10) * mag;
}

/** A coordinate rounded to 0.1 px, to keep the SVG short. */
export const px = (v: number): number => +v.toFixed(1);

/** `s` escaped for XML text and attribute values. */
export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}
