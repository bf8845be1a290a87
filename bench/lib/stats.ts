/**
 * Small statistics for the benches: percentiles by linear interpolation
 * between order statistics, and rounding that passes null through.
 */

/** Linear interpolation between order statistics; null for no data. */
export function percentile(xs: readonly number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const at = (s.length - 1) * p;
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return s[lo]! + (s[hi]! - s[lo]!) * (at - lo);
}

/** The median; null for no data. */
export const p50 = (xs: readonly number[]): number | null => percentile(xs, 0.5);

/** `v` rounded to `digits` decimals (as a number); null stays null. */
export const round = (v: number | null, digits = 0): number | null => (v === null ? null : +v.toFixed(digits));
