/**
 * Finding cloudlets on a network made here (three namespaces on a bridge,
 * bench/lib/topology.ts; multicast never touches the host's interfaces):
 * cloudlet A runs `vmsynth serve --announce` on its bridge address, cloudlet
 * B serves without announcing, and `vmsynth discover` in the client's
 * namespace lists A (found by DNS-SD) and B (from --static), each with the
 * base it holds, its load and its connect time. After A stops, it said
 * goodbye: a new discover no longer finds it.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Scope } from '../../lib/core/scope.js';
import { startCloudlet, VMSYNTH_CLI, type CloudletServer } from '../../bench/lib/cloudlet-server.js';
import { LINKS } from '../../bench/lib/link.js';
import { createTopology, netnsPath, removeStaleTopology, type TopologyNode } from '../../bench/lib/topology.js';
import { guestBase } from '../helpers/guest-base.js';

const run = promisify(execFile);
const cli = VMSYNTH_CLI;
const PREFIX = 'vmsdt-';
const TOKEN = 'discover-test-token';
t.teardown(removeTestRoot);

await guestBase('discbase');
await removeStaleTopology(PREFIX);
const scope = new Scope();
t.teardown(() => scope.close());
const topo = await createTopology(scope, {
  prefix: PREFIX,
  octet: 212,
  links: { clientA: LINKS.lan!, clientB: LINKS.lan!, ab: LINKS.lan! },
});
const { a, b, client } = topo.nodes;

/** `vmsynth serve` in a node's namespace, on its bridge address (announcing on it, with `announce`). */
async function serve(node: TopologyNode, announce: boolean): Promise<CloudletServer> {
  const env = {
    VMSYNTH_TOKEN: TOKEN, // off loopback a server wants client tokens
    ...(announce ? { VMSYNTH_ANNOUNCE: 'true', VMSYNTH_ANNOUNCE_INTERFACE: node.addr } : {}),
  };
  return startCloudlet(scope, {
    name: node.name,
    dir: testRoot,
    listen: { host: node.addr, port: 8021 },
    ns: node.ns,
    env,
  });
}

interface Found {
  cloudlets: Array<{
    host: string;
    port: number;
    source: string;
    rttMs: number | null;
    info: { bases: Array<{ name: string }>; sessions: number; maxSessions: number; accel: string } | null;
  }>;
}

async function discover(): Promise<Found> {
  const { stdout } = await run('nsenter', [
    `--net=${netnsPath(client.ns)}`,
    process.execPath,
    cli,
    'discover',
    '--interface',
    client.addr,
    '--static',
    `${b.addr}:8021`,
    '--token',
    TOKEN,
    '--json',
  ]);
  return JSON.parse(stdout) as Found;
}

t.test(
  'vmsynth discover finds the announced cloudlet and asks the static one, with their bases and load',
  async (t) => {
    const announced = await serve(a, true);
    await serve(b, false);
    const found = await discover();
    const byHost = new Map(found.cloudlets.map((c) => [c.host, c]));
    t.match(
      byHost.get(a.addr),
      { port: 8021, source: 'mdns', info: { sessions: 0, accel: /^(tcg|kvm)$/ } },
      'A, by DNS-SD',
    );
    t.match(byHost.get(b.addr), { port: 8021, source: 'static', info: { sessions: 0 } }, 'B, from the static list');
    for (const c of [a, b])
      t.ok(
        byHost.get(c.addr)?.info?.bases.some((x) => x.name === 'discbase'),
        `${c.name} holds the base (rtt ${byHost.get(c.addr)?.rttMs} ms)`,
      );
    t.equal(found.cloudlets.length, 2, 'nothing else on this network');

    await announced.stop();
    const after = await discover();
    t.same(
      after.cloudlets.filter((c) => c.source === 'mdns'),
      [],
      'A said goodbye when it stopped',
    );
  },
);
