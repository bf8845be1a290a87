/**
 * The first-response bench's drops: what a dropped connection costs a
 * session that resumes. Every run goes through a FlakyLink proxy on the
 * host (between the namespace's client and the server), so the run without
 * a drop pays the same proxy. At 50% of the overlay's segment bytes the
 * link resets the connection and refuses new ones for 1 s or 5 s; the
 * client reconnects and resumes. Reported per variant: p50 first response
 * and overlay completion, and what the drop cost against the run without
 * one; the target is at most the drop's own length plus 2 RTT (the RTT
 * measured by TCP connects over the same link).
 */
import net from 'node:net';
import type { SynthesizeResult } from '../../lib/client/client.js';
import { abortReason, throwIfAborted } from '../../lib/core/scope.js';
import { runClient } from './client-run.js';
import { FlakyLink } from './flaky-link.js';
import { inNs, type Netns } from './link.js';
import { p50, round } from './stats.js';

export const DROPS_MS = [1000, 5000] as const;

interface DropSample {
  firstResponseMs: number;
  completeMs: number | null;
  reconnects: number;
  /** The client's time without a connection, summed over its reconnects. */
  lostMs: number;
}

export interface DropVariant {
  name: string;
  dropMs: number | null;
  samples: DropSample[];
  failures: string[];
}

export interface DropSummary {
  name: string;
  dropMs: number | null;
  n: number;
  failures: number;
  firstResponseMs: number | null;
  completeMs: number | null;
  lostMs: number | null;
  /** p50 first response (and completion) minus the run without a drop's. */
  firstResponseCostMs: number | null;
  completeCostMs: number | null;
  /** The drop's length plus 2 RTT. */
  targetMs: number | null;
  /** cost ÷ target, on completion (the drop lands before or after the first response, depending on the run). */
  completeCostOverTarget: number | null;
}

/**
 * The link's RTT (ms): the median time of 20 TCP connects from the namespace to a listener on the
 * host (a connect is one round trip: SYN, SYN-ACK). This host has no ping.
 */
export async function measureRtt(n: Netns): Promise<number | null> {
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, n.hostAddr, r));
  try {
    const port = (server.address() as net.AddressInfo).port;
    const script = `const net=require('net');(async()=>{const t=[];for(let i=0;i<20;i++){const a=performance.now();await new Promise((r,j)=>{const s=net.connect(${port},'${n.hostAddr}',()=>{t.push(performance.now()-a);s.destroy();r()});s.on('error',j)})}t.sort((x,y)=>x-y);console.log(t[10])})()`;
    const r = await inNs(n, process.execPath, ['-e', script]).catch(() => null);
    const ms = r ? Number(r.stdout.trim()) : NaN;
    return Number.isFinite(ms) ? +ms.toFixed(3) : null;
  } finally {
    server.close();
  }
}

export interface DropRunOptions {
  n: Netns;
  server: { host: string; port: number };
  overlay: string;
  overlayBytes: number;
  path: string;
  runs: number;
  timeoutS: number;
  linkName: string;
  signal: AbortSignal;
}

/** `runs` rounds of: no drop, a 1 s drop, a 5 s drop (order rotated per round), each through its own link. */
export async function runDrops(o: DropRunOptions): Promise<DropVariant[]> {
  const variants: DropVariant[] = [null, ...DROPS_MS].map((dropMs) => ({
    name: dropMs === null ? 'early-start via proxy' : `early-start, ${dropMs / 1000} s drop`,
    dropMs,
    samples: [],
    failures: [],
  }));
  for (let i = 0; i < o.runs; i++) {
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(i + k) % variants.length]!;
      throwIfAborted(o.signal);
      const link = await FlakyLink.open(o.server, [o.n.hostAddr], o.n.hostAddr);
      try {
        if (v.dropMs !== null) void link.cutAtSegmentBytes(Math.round(o.overlayBytes / 2), v.dropMs);
        const r: SynthesizeResult = await runClient(
          o.n.ns,
          link.address,
          o.overlay,
          'early-start',
          { path: o.path },
          o.timeoutS,
          o.signal,
          v.name,
        );
        const s: DropSample = {
          firstResponseMs: r.timeline.firstResponse!,
          completeMs: r.timeline.overlayComplete,
          reconnects: r.reconnects.length,
          lostMs: r.reconnects.reduce((a, x) => a + x.lostMs, 0),
        };
        v.samples.push(s);
        process.stderr.write(
          `${o.linkName} ${i + 1}/${o.runs} ${v.name}: first response ${s.firstResponseMs} ms, complete ${s.completeMs} ms, ${s.reconnects} reconnect(s), ${s.lostMs} ms without a connection\n`,
        );
      } catch (err) {
        if (o.signal.aborted) throw abortReason(o.signal);
        const message = err instanceof Error ? err.message : String(err);
        v.failures.push(message);
        process.stderr.write(`${o.linkName} ${i + 1}/${o.runs} ${v.name}: FAILED: ${message}\n`);
      } finally {
        link.close();
      }
    }
  }
  return variants;
}

export function summarizeDrops(variants: DropVariant[], rttMs: number | null): DropSummary[] {
  const med = (v: DropVariant, f: (s: DropSample) => number | null) =>
    round(p50(v.samples.flatMap((s) => (f(s) === null ? [] : [f(s)!]))));
  const none = variants.find((v) => v.dropMs === null)!;
  const fr0 = med(none, (s) => s.firstResponseMs);
  const c0 = med(none, (s) => s.completeMs);
  return variants.map((v) => {
    const fr = med(v, (s) => s.firstResponseMs);
    const c = med(v, (s) => s.completeMs);
    const target = v.dropMs === null || rttMs === null ? null : Math.round(v.dropMs + 2 * rttMs);
    const completeCost = v.dropMs === null || c === null || c0 === null ? null : c - c0;
    return {
      name: v.name,
      dropMs: v.dropMs,
      n: v.samples.length,
      failures: v.failures.length,
      firstResponseMs: fr,
      completeMs: c,
      lostMs: med(v, (s) => s.lostMs),
      firstResponseCostMs: v.dropMs === null || fr === null || fr0 === null ? null : fr - fr0,
      completeCostMs: completeCost,
      targetMs: target,
      completeCostOverTarget: completeCost === null || !target ? null : +(completeCost / target).toFixed(2),
    };
  });
}

export function printDrops(linkName: string, rttMs: number | null, s: DropSummary[]): void {
  const ms = (n: number | null) => (n === null ? '—' : `${n} ms`);
  console.log(`\n${linkName}: a drop at 50% of the overlay (RTT ${rttMs === null ? '?' : `${rttMs} ms`})`);
  console.log(
    '  variant                     n  first response  complete   without a connection  cost (complete)  target (drop + 2 RTT)  cost/target',
  );
  for (const x of s)
    console.log(
      `  ${x.name.padEnd(26)} ${String(x.n).padStart(2)}  ${ms(x.firstResponseMs).padStart(14)}  ${ms(x.completeMs).padStart(8)}   ${ms(x.lostMs).padStart(20)}  ${ms(x.completeCostMs).padStart(15)}  ${ms(x.targetMs).padStart(21)}  ${x.completeCostOverTarget ?? '—'}`,
    );
}
