/**
 * A handoff between two cloudlets on a network made here
 * (bench/lib/topology.ts: cloudlets A and B and the client each in a
 * network namespace of its own, on a bridge, every link shaped with tc):
 * `vmsynth serve` runs in A's and in B's namespace (each with its own run
 * directory and store; they reach their QEMUs, which libvirtd runs in the
 * host's namespace, through vm/guest-netns.ts), the client runs in its own
 * and builds state on A, then asks for the handoff while it keeps sending
 * requests. The VM moves over the A-B link (38 Mbit/s), the client follows,
 * every request is answered once, and nothing is left in any namespace.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { packageRoot } from '../../lib/core/paths.js';
import { Scope } from '../../lib/core/scope.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { startCloudlet } from '../../bench/lib/cloudlet-server.js';
import { LINKS } from '../../bench/lib/link.js';
import { createTopology, nodeScriptIn, removeStaleTopology, type TopologyNode } from '../../bench/lib/topology.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';

const PREFIX = 'vmsht-';
const TOKEN = 'handoff-netns-test-token';
t.teardown(removeTestRoot);

await guestBase('hnbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'hnbase', out: ov, script: demo });

await removeStaleTopology(PREFIX);
const scope = new Scope();
t.teardown(() => scope.close());
const topo = await createTopology(scope, {
  prefix: PREFIX,
  octet: 213,
  links: { clientA: LINKS.lan!, clientB: LINKS.lan!, ab: LINKS.wifi! },
});
const { a, b, client } = topo.nodes;

/** `vmsynth serve` in a node's namespace. Off loopback a server wants client tokens; the cloudlets present the same one to each other. */
const serve = (node: TopologyNode) =>
  startCloudlet(scope, {
    name: node.name,
    dir: testRoot,
    listen: { host: node.addr, port: 8021 },
    ns: node.ns,
    env: { VMSYNTH_TOKEN: TOKEN, VMSYNTH_HANDOFF_TOKEN: TOKEN },
  });

/** The client's run, in its namespace: state on A, a stream of requests across the handoff to B. */
const CLIENT = `
const { ClientSession } = await import(${JSON.stringify(pathToFileURL(path.join(packageRoot(), 'dist', 'lib', 'client', 'session.js')).href)});
const [overlay, from, to, token] = process.argv.slice(1);
const s = await ClientSession.open({ server: from, overlay, token });
await s.complete;
const add = async (q) => JSON.parse((await s.offload({ method: 'GET', path: '/state?' + q })).body.toString());
for (let i = 0; i < 3; i++) await add('add=1&touch_mb=2&disk_mb=1&disk_off_mb=56');
let sent = 3, on = true, longest = 0;
const stream = (async () => { let last = performance.now(); while (on) { await add('add=1'); sent++; const now = performance.now(); longest = Math.max(longest, now - last); last = now; } })();
await new Promise((r) => setTimeout(r, 500));
const t0 = performance.now();
await s.handoff(to);
const handoffMs = performance.now() - t0;
await new Promise((r) => setTimeout(r, 1000));
on = false;
await stream;
const after = await add('');
const result = { sent, count: after.count, server: s.server.host + ':' + s.server.port, longestGapMs: Math.round(longest), handoffMs: Math.round(handoffMs), session: s.id };
await s.finish();
console.log(JSON.stringify(result));
`;

t.test('a VM moves between cloudlets in their own network namespaces, over a 38 Mbit/s link', async (t) => {
  const servers = [await serve(a), await serve(b)];
  const args = [ov, `${a.addr}:8021`, `${b.addr}:8021`, TOKEN];
  const child = nodeScriptIn(client.ns, CLIENT, args, ['ignore', 'pipe', 'pipe']);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  t.equal(code, 0, `the client ran (${err.slice(-1500)})`);
  const r = JSON.parse(out.trim().split('\n').pop()!) as {
    sent: number;
    count: number;
    server: string;
    longestGapMs: number;
    handoffMs: number;
  };
  t.equal(r.server, `${b.addr}:8021`, 'the client is on B');
  t.equal(r.count, r.sent, `every one of the ${r.sent} requests counted once`);
  t.pass(`handoff ${r.handoffMs} ms; longest gap between replies ${r.longestGapMs} ms`);
  await scope.close();
  for (const [i, s] of servers.entries())
    t.same(await leaks([], s.runDir), NO_LEAKS, `nothing left of cloudlet ${i === 0 ? 'a' : 'b'}`);
});
