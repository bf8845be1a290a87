/**
 * `npm run bench -- handoff`: a live handoff between two cloudlets, each a
 * `vmsynth serve` in a network namespace of its own, the client in a third
 * (bench/lib/topology.ts), the A-B link shaped to each link in turn (38
 * Mbit/s, 1 Gbit/s). B holds each overlay in its store already (a client
 * synthesized it there first: the fleet has it), so the A-B link carries
 * the handoff alone.
 *
 * Apps (BENCH_HANDOFF_APPS, default demo,compute,ocr): the demo VM (the
 * first-response bench's overlay; its state: 5 requests that write 4 MiB of
 * pages and 1 MiB of disk each), and suite apps in the Debian base
 * (bench/lib/suite-app.ts; their state: 3 of their real requests, a fluid
 * simulation or an OCR of the suite's page). Each run (bench/lib/handoff-run.ts):
 * the client synthesizes the overlay on A, builds the state, then sends a
 * steady stream of small requests that count on, one at a time; the VM moves
 * to B, and the client follows. Modes (BENCH_HANDOFF_MODES): `vmsynth
 * handoff` with early start (the default) and in safe mode (`--whole`), and
 * the baseline, QEMU's own live migration of the same VM with its disk, done
 * as libvirt's `virsh migrate --live --copy-storage-all` does it, over the
 * same link (bench/lib/qemu-migration.ts), under the same stream sent
 * straight to the guest. A Debian app's migration copies its 4 GiB disk
 * whole (15 minutes at 38 Mbit/s): on a link under 100 Mbit/s it runs once
 * per app, not once per round.
 *
 * BENCH_HANDOFF_RUNS (default 3) rounds per link; BENCH_HANDOFF_LINKS
 * (default wifi,lan); BENCH_HANDOFF_AUTO_CONVERGE=1: the baseline with
 * QEMU's auto-converge (`virsh migrate --auto-converge`; without it a Debian
 * app's migration at 38 Mbit/s did not converge under the stream). Writes bench/results/handoff-<time>.json and an SVG of
 * the request stream across one handoff of each app, link and mode
 * (bench/lib/handoff-report.ts).
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../lib/core/paths.js';
import { Scope } from '../lib/core/scope.js';
import { APP_NAMES, type AppName } from '../lib/guest/app-inputs.js';
import { detectAccel } from '../lib/vm/accel.js';
import { Libvirt } from '../lib/vm/libvirt.js';
import { renderSvg } from './lib/chart.js';
import { startCloudlet } from './lib/cloudlet-server.js';
import { prepare } from './lib/demo-overlay.js';
import {
  client,
  handoffRun,
  migrateRun,
  MODES,
  type HandoffApp,
  type Mode,
  type RunResult,
} from './lib/handoff-run.js';
import { handoffChart, printSummary, summarize, type Failure } from './lib/handoff-report.js';
import { LINKS } from './lib/link.js';
import { onSignals } from './lib/signals.js';
import { prepareApp, suiteBase } from './lib/suite-app.js';
import { createTopology, removeStaleTopology, setLinks, type TopologyNode } from './lib/topology.js';

const PREFIX = 'vmshb-';
const TOKEN = 'vmsynth-bench-handoff';
const PORT = 8021;
const say = (msg: string) => process.stderr.write(`bench: ${msg}\n`);

/** `vmsynth serve` in a node's namespace, trusting the bench keys; resolves with its run directory once it listens. */
async function serve(scope: Scope, node: TopologyNode, tmp: string, trust: string[]): Promise<string> {
  const env = { VMSYNTH_TOKEN: TOKEN, VMSYNTH_HANDOFF_TOKEN: TOKEN, VMSYNTH_TRUST: trust.join(',') };
  const c = await startCloudlet(scope, {
    name: node.name,
    dir: tmp,
    listen: { host: node.addr, port: PORT },
    ns: node.ns,
    env,
  });
  return c.runDir;
}

/** The apps asked for, built (or found in the cache), with the keys that sign them. */
async function prepareApps(names: string[], signal: AbortSignal): Promise<{ apps: HandoffApp[]; trust: string[] }> {
  for (const name of names)
    if (name !== 'demo' && !(APP_NAMES as readonly string[]).includes(name))
      throw new Error(`BENCH_HANDOFF_APPS: unknown app "${name}"; choose from demo, ${APP_NAMES.join(', ')}`);
  const apps: HandoffApp[] = [];
  const trust: string[] = [];
  let debian: ReturnType<typeof suiteBase> | null = null;
  for (const name of names) {
    if (name === 'demo') {
      const p = await prepare(signal, { profile: false });
      trust.push(p.key.pubFile);
      const build = {
        method: 'GET' as const,
        path: '/state?add=1&touch_mb=4&disk_mb=1&disk_off_mb=56',
        times: 5,
        counts: true,
      };
      apps.push({ name, overlay: p.overlay.dir, base: p.base, build, stream: '/state?add=1', countPath: '/state?' });
      continue;
    }
    const { guest, base, key } = await (debian ??= suiteBase(signal));
    say(`${name}: building or finding its overlay (the suite bench's)`);
    const a = await prepareApp(name as AppName, guest, base, key, false, signal);
    trust.push(key.pubFile);
    const build = { method: 'POST' as const, path: a.request.path, bodyFile: a.input.file, times: 3, counts: false };
    apps.push({ name, overlay: a.profiled.dir, base, build, stream: '/count?add=1', countPath: '/count' });
  }
  return { apps, trust: [...new Set(trust)] };
}

export async function benchHandoff(): Promise<void> {
  const runs = Math.max(1, Number(process.env.BENCH_HANDOFF_RUNS) || 3);
  const appNames = (process.env.BENCH_HANDOFF_APPS ?? 'demo,compute,ocr').split(',').filter(Boolean);
  const links = (process.env.BENCH_HANDOFF_LINKS ?? 'wifi,lan')
    .split(',')
    .map((n) => LINKS[n]!)
    .filter(Boolean);
  const modes = (process.env.BENCH_HANDOFF_MODES ?? MODES.join(','))
    .split(',')
    .filter((m): m is Mode => (MODES as readonly string[]).includes(m));
  const scope = new Scope();
  const ac = new AbortController();
  const offSignals = onSignals(ac, 'handoff');
  try {
    const accel = (await detectAccel()).accel;
    const { apps, trust } = await prepareApps(appNames, ac.signal);
    const lv = await Libvirt.connect();
    scope.defer('close libvirt', () => lv.close());
    await removeStaleTopology(PREFIX);
    const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-bench-handoff-'));
    scope.defer(`remove ${tmp}`, () => fsp.rm(tmp, { recursive: true, force: true }));
    const topo = await createTopology(scope, {
      prefix: PREFIX,
      octet: 204,
      links: { clientA: LINKS.lan!, clientB: LINKS.lan!, ab: links[0]! },
    });
    const runDirA = await serve(scope, topo.nodes.a, tmp, trust);
    await serve(scope, topo.nodes.b, tmp, trust);
    const addrB = `${topo.nodes.b.addr}:${PORT}`;
    const migration = { autoConverge: process.env.BENCH_HANDOFF_AUTO_CONVERGE === '1', signal: ac.signal };
    const ctx = {
      nodes: topo.nodes,
      runDirA,
      addrA: `${topo.nodes.a.addr}:${PORT}`,
      addrB,
      token: TOKEN,
      lv,
      migration,
    };
    // B's store takes each overlay first: what crosses A-B in a handoff is then the delta alone.
    for (const app of apps) {
      say(`${app.name}: B's store takes the overlay`);
      await client(topo.nodes.client, { overlay: app.overlay, from: addrB, to: '', token: TOKEN, mode: 'warm', app });
    }
    const results: RunResult[] = [];
    const failures: Failure[] = [];
    for (const link of links) {
      await setLinks(topo, { ...topo.links, ab: link });
      for (let i = 0; i < runs; i++)
        for (const app of apps)
          for (const mode of modes) {
            if (ac.signal.aborted) throw ac.signal.reason;
            // A Debian VM's migration copies its 4 GiB disk whole: on a slow link, once per app.
            if (mode === 'migrate' && app.name !== 'demo' && link.rateMbit < 100 && i > 0) continue;
            const what = `${app.name} ${link.name} ${mode} #${i + 1}`;
            // A failed run (QEMU's migration left the guest dead on B in some: docs/benchmarks.md) is counted, not fatal.
            const r = await (
              mode === 'migrate'
                ? migrateRun(ctx, app, link, (m) => say(`${what}: ${m}`))
                : handoffRun(ctx, app, link, mode)
            ).catch((err: Error) => {
              failures.push({ app: app.name, link: link.name, mode, run: i + 1, error: err.message.slice(0, 4000) });
              say(`handoff ${what} failed: ${err.message.slice(0, 300)}`);
              return null;
            });
            if (!r) continue;
            results.push(r);
            say(
              `handoff ${what}: downtime ${Math.round(r.downtimeMs)} ms, stop ${r.stoppedMs} ms, total ${r.totalMs} ms, ${r.bytesOverAB} bytes over A-B (delta ${r.deltaBytes}), counted once: ${r.countedOnce}`,
            );
          }
    }
    const summary = summarize(results, failures, appNames, links, modes);
    const at = new Date().toISOString();
    const out = {
      bench: 'handoff',
      at,
      accel,
      cpus: os.cpus().length,
      runs,
      apps: appNames,
      autoConverge: migration.autoConverge,
      summary,
      failures,
      results,
    };
    const dir = path.join(packageRoot(), 'bench', 'results');
    await fsp.mkdir(dir, { recursive: true });
    const stamp = at.replace(/[:.]/g, '-');
    const file = path.join(dir, `handoff-${stamp}.json`);
    const svg = path.join(dir, `handoff-${stamp}.svg`);
    await fsp.writeFile(file, JSON.stringify(out, null, 2) + '\n');
    await fsp.writeFile(svg, await renderSvg(handoffChart(results)));
    console.log(
      `handoff benchmark (${accel.toUpperCase()}, ${os.cpus().length} CPUs, ${runs} rounds per link; A-B link shaped, B holding the overlays)`,
    );
    printSummary(summary, appNames, links);
    console.log(`\nresults: ${file}\nplot: ${svg}`);
    if (failures.length) process.exitCode = 1;
  } finally {
    offSignals();
    await scope.close();
  }
}
