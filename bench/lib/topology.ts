/**
 * Cloudlets on one machine, for the handoff bench and tests: three network
 * namespaces (cloudlet A, cloudlet B, the client) on one bridge, which lives
 * in a fourth namespace of its own, so nothing touches the host's interfaces
 * and multicast (DNS-SD) stays on a network made here.
 *
 * Each pair of nodes has its own link: every node shapes what it sends to
 * each peer with an HTB class of that link's rate (a u32 filter on the
 * peer's address), each class with a byte-limited FIFO as deep as the link's
 * queue (rate x latency). Traffic to no peer in particular (multicast) goes
 * unshaped. So client<->A, client<->B and A<->B can each have their rate,
 * both ways, and can be changed while traffic flows (setLinks).
 *
 * Names carry the PID of the run behind a prefix, so concurrent runs do not
 * collide and a run removes the namespaces of killed ones (removeStaleTopology).
 * Processes enter a node with `nsenter --net=<netnsPath>`: the network
 * namespace only, so FUSE mounts stay visible to QEMU (`ip netns exec` would
 * give them a mount namespace of their own).
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { exec } from '../../lib/core/exec.js';
import { VmsynthError } from '../../lib/core/errors.js';
import type { Scope } from '../../lib/core/scope.js';
import { processAlive } from '../../lib/core/stale.js';
import type { Link } from './link.js';

export type NodeName = 'a' | 'b' | 'client';
export const NODES: readonly NodeName[] = ['a', 'b', 'client'];

/** The links between the nodes; a link is the same both ways. */
export interface TopologyLinks {
  clientA: Link;
  clientB: Link;
  ab: Link;
}

export interface TopologyNode {
  name: NodeName;
  /** Network namespace name (`ip netns`). */
  ns: string;
  /** Its address on the bridge. */
  addr: string;
}

export interface Topology {
  nodes: Record<NodeName, TopologyNode>;
  /** The bridge's namespace. */
  switchNs: string;
  /** The prefix length of the nodes' network. */
  prefix: number;
  links: TopologyLinks;
}

/** The interface each node has on the bridge. */
export const NODE_DEV = 'lan0';

/** Path of a namespace, for `nsenter --net=`. */
export const netnsPath = (ns: string): string => `/run/netns/${ns}`;

/** A node script (an ES module's text) run in namespace `ns` with `args`, entered with nsenter (the network only). */
export function nodeScriptIn(ns: string, script: string, args: string[], stdio: StdioOptions): ChildProcess {
  return spawn('nsenter', [`--net=${netnsPath(ns)}`, process.execPath, '--input-type=module', '-e', script, ...args], {
    stdio,
  });
}

function topologyError(what: string, err: unknown): VmsynthError {
  const detail = err instanceof Error ? err.message : String(err);
  return new VmsynthError(
    'VMS_USAGE',
    `the cloudlet topology needs root, iproute2 (ip netns, bridges, veth) and tc's htb and bfifo; ${what}: ${detail}`,
    { cause: err },
  );
}

/** Namespace names and the /24 for a run (10.<octet>.<pid % 256>.0/24). */
export function topologyNames(prefix: string, pid: number, octet: number): Omit<Topology, 'links'> {
  const net = `10.${octet}.${pid % 256}.`;
  const node = (name: NodeName, host: number): TopologyNode => ({
    name,
    ns: `${prefix}${pid}${name}`,
    addr: `${net}${host}`,
  });
  return {
    nodes: { a: node('a', 1), b: node('b', 2), client: node('client', 3) },
    switchNs: `${prefix}${pid}sw`,
    prefix: 24,
  };
}

/** The link between two distinct nodes. */
export function linkBetween(links: TopologyLinks, x: NodeName, y: NodeName): Link {
  const pair = [x, y].sort().join('-');
  if (pair === 'a-client') return links.clientA;
  if (pair === 'b-client') return links.clientB;
  if (pair === 'a-b') return links.ab;
  throw new Error(`no link between ${x} and ${y}`);
}

/** tc's size for a rate and a queue time, in bytes (at least 16 KB). */
export function queueBytes(link: Link): number {
  const ms = Number(/^(\d+)ms$/.exec(link.latency)?.[1] ?? 50);
  return Math.max(16_384, Math.round((link.rateMbit * 1e6 * ms) / 8000));
}

/** The tc commands that shape what `from` sends to each peer (pure; run in `from`'s namespace). */
export function shapingCommands(
  t: Omit<Topology, 'links'>,
  from: NodeName,
  links: TopologyLinks,
  replace: boolean,
): string[][] {
  const cmds: string[][] = [];
  const verb = replace ? 'change' : 'add';
  if (!replace) cmds.push(['qdisc', 'add', 'dev', NODE_DEV, 'root', 'handle', '1:', 'htb', 'default', '99']);
  const peers = NODES.filter((n) => n !== from);
  peers.forEach((peer, i) => {
    const link = linkBetween(links, from, peer);
    const classId = `1:${10 + i}`;
    const rate = `${link.rateMbit}mbit`;
    cmds.push([
      'class',
      verb,
      'dev',
      NODE_DEV,
      'parent',
      '1:',
      'classid',
      classId,
      'htb',
      'rate',
      rate,
      'ceil',
      rate,
      'burst',
      link.burst,
    ]);
    cmds.push([
      'qdisc',
      replace ? 'replace' : 'add',
      'dev',
      NODE_DEV,
      'parent',
      classId,
      'bfifo',
      'limit',
      String(queueBytes(link)),
    ]);
    if (!replace) {
      const match = ['match', 'ip', 'dst', `${t.nodes[peer].addr}/32`];
      cmds.push([
        'filter',
        'add',
        'dev',
        NODE_DEV,
        'parent',
        '1:',
        'protocol',
        'ip',
        'prio',
        '1',
        'u32',
        ...match,
        'flowid',
        classId,
      ]);
    }
  });
  if (!replace)
    cmds.push(['class', 'add', 'dev', NODE_DEV, 'parent', '1:', 'classid', '1:99', 'htb', 'rate', '10gbit']);
  return cmds;
}

/**
 * Creates the namespaces, the bridge and the shaped links; their removal is
 * deferred on `scope` (deleting a namespace deletes its veths and qdiscs).
 */
export async function createTopology(
  scope: Scope,
  opts: { prefix: string; octet: number; links: TopologyLinks; pid?: number },
): Promise<Topology> {
  const t: Topology = { ...topologyNames(opts.prefix, opts.pid ?? process.pid, opts.octet), links: opts.links };
  const inSwitch = (args: string[]) => exec('ip', ['-n', t.switchNs, ...args]);
  try {
    for (const ns of [t.switchNs, ...NODES.map((n) => t.nodes[n].ns)]) {
      await exec('ip', ['netns', 'add', ns]);
      scope.defer(`delete network namespace ${ns}`, () => exec('ip', ['netns', 'del', ns]));
    }
    await inSwitch(['link', 'add', 'br0', 'type', 'bridge']);
    await inSwitch(['link', 'set', 'br0', 'up']);
    for (const name of NODES) {
      const node = t.nodes[name];
      const port = `p-${name}`;
      await inSwitch(['link', 'add', port, 'type', 'veth', 'peer', 'name', NODE_DEV, 'netns', node.ns]);
      await inSwitch(['link', 'set', port, 'master', 'br0']);
      await inSwitch(['link', 'set', port, 'up']);
      await exec('ip', ['-n', node.ns, 'addr', 'add', `${node.addr}/${t.prefix}`, 'dev', NODE_DEV]);
      await exec('ip', ['-n', node.ns, 'link', 'set', NODE_DEV, 'up', 'multicast', 'on']);
      await exec('ip', ['-n', node.ns, 'link', 'set', 'lo', 'up']);
      for (const cmd of shapingCommands(t, name, opts.links, false)) await exec('tc', ['-n', node.ns, ...cmd]);
    }
  } catch (err) {
    throw topologyError('creating the namespaces, bridge and links failed', err);
  }
  return t;
}

/** Changes the links' rates and queues while traffic flows. */
export async function setLinks(t: Topology, links: TopologyLinks): Promise<void> {
  try {
    for (const name of NODES)
      for (const cmd of shapingCommands(t, name, links, true)) await exec('tc', ['-n', t.nodes[name].ns, ...cmd]);
    t.links = links;
  } catch (err) {
    throw topologyError('changing the links failed', err);
  }
}

/** Removes the namespaces of runs with this prefix whose process is gone. */
export async function removeStaleTopology(prefix: string): Promise<void> {
  const re = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(\\d+)(a|b|client|sw)$`);
  for (const line of (await exec('ip', ['netns', 'list'])).stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const pid = Number(re.exec(name)?.[1]);
    if (pid && pid !== process.pid && !processAlive(pid))
      await exec('ip', ['netns', 'del', name]).catch(() => undefined);
  }
}
