/**
 * The cloudlet topology on real namespaces: every node reaches every other,
 * each pair's traffic goes through that pair's class at that pair's rate,
 * multicast crosses the bridge, rates change in place, and nothing is left.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { exec } from '../../lib/core/exec.js';
import { withScope } from '../../lib/core/scope.js';
import { processAlive } from '../../lib/core/stale.js';
import { LINKS } from '../../bench/lib/link.js';
import {
  createTopology,
  netnsPath,
  NODE_DEV,
  removeStaleTopology,
  setLinks,
  type Topology,
  type TopologyNode,
} from '../../bench/lib/topology.js';

const PREFIX = 'vmstt-';
const links = { clientA: LINKS.wifi!, clientB: LINKS.wifi!, ab: LINKS.lan! };

/** Runs a Node script in a node's network namespace; resolves with its stdout once it exits. */
async function nodeIn(node: TopologyNode, script: string, onLine?: (line: string) => void): Promise<string> {
  const p = spawn('nsenter', [`--net=${netnsPath(node.ns)}`, process.execPath, '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  p.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (onLine) for (const l of d.toString().split('\n').filter(Boolean)) onLine(l);
  });
  const [code] = (await once(p, 'exit')) as [number];
  if (code !== 0) throw new Error(`script in ${node.ns} exited ${code}: ${out}`);
  return out;
}

/** A TCP server in `to` that reads everything; a client in `from` sends `bytes`. Resolves with what the server got. */
async function send(from: TopologyNode, to: TopologyNode, bytes: number): Promise<number> {
  let ready!: () => void;
  const listening = new Promise<void>((r) => (ready = r));
  const server = nodeIn(
    to,
    `const s=require('net').createServer(c=>{let n=0;c.on('data',d=>n+=d.length);c.on('end',()=>{console.log('got',n);s.close()})});s.listen(7070,'${to.addr}',()=>console.log('ready'))`,
    (l) => l === 'ready' && ready(),
  );
  await listening;
  await nodeIn(
    from,
    `const c=require('net').connect(7070,'${to.addr}',()=>c.end(Buffer.alloc(${bytes})));c.on('close',()=>{})`,
  );
  return Number(/got (\d+)/.exec(await server)?.[1]);
}

interface TcClass {
  /** bits per second */
  rate: number;
  /** bytes sent through the class */
  bytes: number;
}
const UNITS: Record<string, number> = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9 };
/** `tc -s class show` parsed (this iproute2 has no JSON for htb classes). */
async function classes(node: TopologyNode): Promise<Map<string, TcClass>> {
  const { stdout } = await exec('tc', ['-n', node.ns, '-s', 'class', 'show', 'dev', NODE_DEV]);
  const out = new Map<string, TcClass>();
  for (const m of stdout.matchAll(/class htb (\S+) .*?rate (\d+(?:\.\d+)?)([KMG]?bit) .*\n\s*Sent (\d+) bytes/g))
    out.set(m[1]!, { rate: Number(m[2]) * UNITS[m[3]!.toLowerCase()]!, bytes: Number(m[4]) });
  return out;
}

t.test('three nodes on a bridge, each pair its own shaped link', async (t) => {
  let made: Topology | null = null;
  await withScope(async (scope) => {
    const topo = await createTopology(scope, { prefix: PREFIX, octet: 211, links });
    made = topo;
    const { a, b, client } = topo.nodes;

    const before = await classes(a);
    t.equal(before.get('1:10')?.rate, links.ab.rateMbit * 1e6, 'A to B: the A<->B rate');
    t.equal(before.get('1:11')?.rate, links.clientA.rateMbit * 1e6, 'A to the client: the client<->A rate');

    t.equal(await send(a, b, 200_000), 200_000, 'A reaches B');
    t.equal(await send(client, a, 50_000), 50_000, 'the client reaches A');
    t.equal(await send(client, b, 50_000), 50_000, 'the client reaches B');
    const after = await classes(a);
    const grew = (h: string) => (after.get(h)?.bytes ?? 0) - (before.get(h)?.bytes ?? 0);
    t.ok(grew('1:10') > 200_000, `A's bytes to B went through the A<->B class (${grew('1:10')} bytes)`);
    t.ok(grew('1:11') < 20_000, `only acknowledgements went to the client's class (${grew('1:11')} bytes)`);

    // Multicast, on the bridge made here: A sends to a link-local group, B and the client hear it.
    const group = '224.0.0.251';
    const listen = (n: TopologyNode) => {
      let up!: () => void;
      const joined = new Promise<void>((r) => (up = r));
      const heard = nodeIn(
        n,
        `const s=require('dgram').createSocket({type:'udp4',reuseAddr:true});s.on('message',m=>{console.log('heard',m.toString());s.close()});s.bind(15353,()=>{s.addMembership('${group}','${n.addr}');console.log('joined')});setTimeout(()=>process.exit(3),10000).unref()`,
        (l) => l === 'joined' && up(),
      );
      return { joined, heard };
    };
    const listeners = [listen(b), listen(client)];
    await Promise.all(listeners.map((l) => l.joined));
    await nodeIn(
      a,
      `const s=require('dgram').createSocket('udp4');s.bind(()=>{s.setMulticastInterface('${a.addr}');s.send('hello from a',15353,'${group}',()=>s.close())})`,
    );
    for (const l of listeners) t.match(await l.heard, /heard hello from a/, 'a multicast reached the other nodes');

    await setLinks(topo, { ...links, ab: LINKS.wifi! });
    t.equal((await classes(a)).get('1:10')?.rate, LINKS.wifi!.rateMbit * 1e6, 'setLinks changed A<->B in place');
    t.equal((await classes(b)).get('1:10')?.rate, LINKS.wifi!.rateMbit * 1e6, 'both ways');
  });
  const left = (await exec('ip', ['netns', 'list'])).stdout;
  for (const ns of [made!.switchNs, ...Object.values(made!.nodes).map((n) => n.ns)])
    t.notMatch(left, ns, `${ns} is gone`);
});

t.test("a killed run's namespaces are removed by the next run, a live run's are not", async (t) => {
  const dead = 4_194_000;
  t.notOk(processAlive(dead), `no process ${dead}`);
  const names = (pid: number) => ['a', 'b', 'client', 'sw'].map((r) => `${PREFIX}${pid}${r}`);
  for (const ns of [...names(dead), ...names(process.pid)]) await exec('ip', ['netns', 'add', ns]);
  t.teardown(async () => {
    for (const ns of names(process.pid)) await exec('ip', ['netns', 'del', ns]).catch(() => undefined);
  });
  await removeStaleTopology(PREFIX);
  const left = (await exec('ip', ['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0]);
  t.same(
    names(dead).filter((n) => left.includes(n)),
    [],
    'the dead run’s are gone',
  );
  t.same(
    names(process.pid).filter((n) => !left.includes(n)),
    [],
    'this run’s stay',
  );
});
