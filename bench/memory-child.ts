/**
 * The confined half of `npm run bench -- memory`: builds or applies one
 * overlay with the library calls the CLI makes, inside the memory cgroup the
 * parent moved it into, and prints one JSON line (time, peak RSS).
 */
import { baseInput, buildOverlay } from '../lib/overlay/builder.js';
import { loadSigningKey } from '../lib/overlay/keys.js';
import { applyOverlay } from '../lib/offline/apply.js';
import { loadBase } from '../lib/vm/base.js';

const [op, arg] = process.argv.slice(2);
const o = JSON.parse(arg ?? '{}') as {
  base: string;
  custom: { memory: string; disk: string; deviceState: string };
  overlay: string;
  out: string;
};
const t0 = performance.now();
if (op === 'build') {
  const base = await loadBase(o.base);
  const r = await buildOverlay({
    base: baseInput(base),
    custom: o.custom,
    appPort: 8000,
    key: await loadSigningKey(),
    out: o.overlay,
  });
  console.log(
    JSON.stringify({
      ms: Math.round(performance.now() - t0),
      maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
      overlayBytes: r.manifestBytes + r.segmentsBytes,
      segments: r.segments,
    }),
  );
} else if (op === 'apply') {
  const r = await applyOverlay({ overlay: o.overlay, base: o.base, out: o.out, threads: 2 });
  console.log(
    JSON.stringify({
      ms: Math.round(performance.now() - t0),
      maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
      applyMBps: Math.round(r.apply.mbps),
    }),
  );
} else {
  process.stderr.write('usage: memory-child build|apply JSON\n');
  process.exit(64);
}
