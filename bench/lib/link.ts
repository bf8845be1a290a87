/**
 * The benches' emulated network link: a network namespace for the client and
 * a veth pair to the host, addressed as a /30 in 10.<octet>.0.0/16, both ends
 * shaped with a tbf qdisc so the kernel's TCP sees a real bottleneck each way.
 * Needs root, iproute2 (`ip netns`, `tc`) and the tbf qdisc. Names carry the
 * run's PID behind a per-bench prefix (LinkNames), so concurrent runs and
 * different benches do not collide, and a run can remove the leftovers of
 * killed ones (removeStale).
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { VmsynthError } from '../../lib/core/errors.js';
import { exec, type ExecResult } from '../../lib/core/exec.js';
import type { Scope } from '../../lib/core/scope.js';
import { processAlive } from '../../lib/core/stale.js';

export interface Link {
  name: string;
  rateMbit: number;
  burst: string;
  latency: string;
}

/**
 * wifi: 38 Mbit/s, burst 32 kbit, queue up to 50 ms (~240 KB, an AP-sized
 *       buffer); an effective 802.11n rate.
 * lan:  1 Gbit/s, burst 256 KB (~2 ms of traffic: a smaller burst costs
 *       throughput at this rate), queue up to 10 ms.
 */
export const LINKS: Record<string, Link> = {
  wifi: { name: 'wifi', rateMbit: 38, burst: '32kbit', latency: '50ms' },
  lan: { name: 'lan', rateMbit: 1000, burst: '256kb', latency: '10ms' },
};

/** One bench's names: give each bench its own, so their resources (and stale removal) stay apart. */
export interface LinkNames {
  /** Network namespace prefix, e.g. 'vmsfr-' (namespace `<ns><pid>`). */
  ns: string;
  /** veth device prefix, e.g. 'vfr' (devices `<dev><pid>h` on the host, `<dev><pid>n` in the namespace; at most 7 characters, for the 15-character limit). */
  dev: string;
  /** Temporary directory prefix, e.g. 'vmsynth-bench-first-response-' (directory `<tmpdir>/<tmp><pid>`, see tmpDirFor). */
  tmp: string;
  /** The bench's name in error messages, e.g. 'first-response'. */
  bench: string;
  /** Second octet of the 10.<octet>.0.0/16 the /30s are taken from (0..255), e.g. 201. */
  octet: number;
}

export interface Netns {
  ns: string;
  hostDev: string;
  nsDev: string;
  hostAddr: string;
  nsAddr: string;
  /** The bench's name, for error messages. */
  bench: string;
}

/** Names and a /30 in 10.<octet>.0.0/16, both from the PID, so concurrent runs do not collide. */
export function netnsFor(pid: number, names: LinkNames): Netns {
  const block = pid % 16384;
  const net = `10.${names.octet}.${block >> 6}.`;
  const host = (block & 63) * 4;
  return {
    ns: `${names.ns}${pid}`,
    hostDev: `${names.dev}${pid}h`,
    nsDev: `${names.dev}${pid}n`,
    hostAddr: `${net}${host + 1}`,
    nsAddr: `${net}${host + 2}`,
    bench: names.bench,
  };
}

/** The run's temporary directory (not created here); removeStale removes those of dead PIDs. */
export function tmpDirFor(pid: number, names: LinkNames): string {
  return path.join(os.tmpdir(), `${names.tmp}${pid}`);
}

export function linkError(bench: string, what: string, err: unknown): VmsynthError {
  const detail = err instanceof Error ? err.message : String(err);
  return new VmsynthError(
    'VMS_USAGE',
    `the ${bench} bench emulates its link with a network namespace, a veth pair and tc tbf, as root; ${what}: ${detail}`,
    { cause: err },
  );
}

const ip = (args: string[]) => exec('ip', args);

/** `cmd args` run inside the namespace. */
export const inNs = (n: Netns, cmd: string, args: string[]): Promise<ExecResult> =>
  exec('ip', ['netns', 'exec', n.ns, cmd, ...args]);

/** Fails with what is missing when `ip netns` or `tc` cannot be used here. */
export async function checkLinkTools(names: LinkNames): Promise<void> {
  if (process.getuid?.() !== 0) throw linkError(names.bench, 'not running as root', `uid ${process.getuid?.()}`);
  await ip(['netns', 'list']).catch((err: unknown) => {
    throw linkError(names.bench, '`ip netns list` failed (iproute2 missing, or no network namespace support)', err);
  });
  await exec('tc', ['-V']).catch((err: unknown) => {
    throw linkError(names.bench, '`tc` is missing (install iproute2)', err);
  });
}

const reEscape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Removes the namespaces, veths and temporary directories with these names'
 * prefixes whose PID is gone (runs killed before they could clean up).
 */
export async function removeStale(names: LinkNames): Promise<void> {
  const ns = (await ip(['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0] ?? '');
  const nsRe = new RegExp(`^${reEscape(names.ns)}(\\d+)$`);
  for (const name of ns) {
    const pid = Number(nsRe.exec(name)?.[1]);
    if (pid && pid !== process.pid && !processAlive(pid)) await ip(['netns', 'del', name]).catch(() => undefined);
  }
  const devRe = new RegExp(`^\\d+:\\s+(${reEscape(names.dev)}(\\d+)h)[@:]`);
  for (const line of (await ip(['-o', 'link', 'show'])).stdout.split('\n')) {
    const m = devRe.exec(line);
    const pid = Number(m?.[2]);
    if (m && pid !== process.pid && !processAlive(pid)) await ip(['link', 'del', m[1]!]).catch(() => undefined);
  }
  for (const name of await fsp.readdir(os.tmpdir())) {
    const pid = Number(name.startsWith(names.tmp) ? name.slice(names.tmp.length) : NaN);
    if (pid && pid !== process.pid && !processAlive(pid))
      await fsp.rm(path.join(os.tmpdir(), name), { recursive: true, force: true });
  }
}

/** Namespace + veth pair, addressed and up; their removal is deferred on `scope` (a veth's qdiscs go with it). */
export async function createLinkPair(scope: Scope, n: Netns): Promise<void> {
  try {
    await ip(['netns', 'add', n.ns]);
    scope.defer(`delete network namespace ${n.ns}`, () => ip(['netns', 'del', n.ns]));
    await ip(['link', 'add', n.hostDev, 'type', 'veth', 'peer', 'name', n.nsDev]);
    scope.defer(`delete veth pair ${n.hostDev}`, () => ip(['link', 'del', n.hostDev]));
    await ip(['link', 'set', n.nsDev, 'netns', n.ns]);
    await ip(['addr', 'add', `${n.hostAddr}/30`, 'dev', n.hostDev]);
    await ip(['link', 'set', n.hostDev, 'up']);
    await inNs(n, 'ip', ['addr', 'add', `${n.nsAddr}/30`, 'dev', n.nsDev]);
    await inNs(n, 'ip', ['link', 'set', n.nsDev, 'up']);
    await inNs(n, 'ip', ['link', 'set', 'lo', 'up']);
  } catch (err) {
    throw linkError(n.bench, 'creating the namespace and veth pair failed', err);
  }
}

/** Shapes both directions: a tbf root qdisc on each end (replacing the previous link's). */
export async function shape(n: Netns, link: Link): Promise<void> {
  const tbf = (dev: string) => [
    'qdisc',
    'replace',
    'dev',
    dev,
    'root',
    'tbf',
    'rate',
    `${link.rateMbit}mbit`,
    'burst',
    link.burst,
    'latency',
    link.latency,
  ];
  try {
    await exec('tc', tbf(n.hostDev));
    await inNs(n, 'tc', tbf(n.nsDev));
  } catch (err) {
    throw linkError(
      n.bench,
      `shaping the veth pair to ${link.rateMbit} Mbit/s failed (is the tbf qdisc, CONFIG_NET_SCH_TBF, in this kernel?)`,
      err,
    );
  }
}
