/**
 * What the live view shows of each session, built from the server's
 * diagnostics channels (core/diagnostics.ts): who, which policy and base,
 * the VM's state, first response and completion, every segment applied
 * with its lane (background, demand, hurried, from the store, from the
 * object store), each guest read that was held and how long, reconnects,
 * adoptions by a restarted server. Pure bookkeeping: `apply` takes one
 * event, `snapshot` gives a session as JSON. Sessions that ended are kept
 * for a while (most recent first), so the page can show how they went.
 */
import type { ChannelName } from '../core/diagnostics.js';

/** Where an applied segment came from, in the order the page draws them. */
export const LANES = ['background', 'demand', 'hurried', 'store', 'object'] as const;
export type Lane = (typeof LANES)[number];

export interface SessionSnapshot {
  id: string;
  client: string;
  peer: string;
  policy: string;
  base: string;
  segments: number;
  overlayBytes: number;
  /** Wall clock (ms since the epoch) when this server started or adopted the session. */
  startedAt: number;
  state: 'running' | 'detached' | 'ended';
  vm: 'starting' | 'running' | 'died' | 'gone';
  resumedMs: number | null;
  firstResponseMs: number | null;
  completeMs: number | null;
  /** Segments applied: ms since startedAt, lane (index into LANES), bytes. */
  arrivals: { t: number[]; lane: number[]; bytes: number[] };
  /** Guest reads that were held: when each went on (ms since startedAt) and how long it waited. */
  held: { t: number[]; ms: number[] };
  reconnects: { t: number; peer: string }[];
  drops: { t: number }[];
  /** A restarted server took the session over from its keeper. */
  adopted: boolean;
  error: { code: string; message: string } | null;
}

interface Entry {
  snap: SessionSnapshot;
  t0: number;
  hurried: Set<number>;
}

export class SessionBoard {
  private readonly live = new Map<string, Entry>();
  private readonly ended: Entry[] = [];
  private readonly changed = new Set<string>();

  constructor(
    /** How many ended sessions are kept. */
    private readonly keepEnded = 20,
    private readonly now: () => number = () => performance.now(),
    private readonly wall: () => number = () => Date.now(),
  ) {}

  /** Takes one diagnostics event; returns whether it changed a session. */
  apply(name: ChannelName, m: Record<string, unknown>): boolean {
    const id = typeof m.session === 'string' ? m.session : null;
    if (!id) return false;
    if (name === 'sessionStarted' || name === 'sessionAdopted') {
      this.live.set(id, this.entry(id, m, name === 'sessionAdopted'));
      this.changed.add(id);
      return true;
    }
    const e = this.live.get(id);
    if (!e) return false;
    const s = e.snap;
    const t = Math.round(this.now() - e.t0);
    switch (name) {
      case 'sessionResumed':
        s.vm = 'running';
        s.resumedMs = num(m.ms);
        break;
      case 'firstResponse':
        s.firstResponseMs = num(m.ms);
        break;
      case 'overlayComplete':
        s.completeMs = num(m.ms);
        break;
      case 'demandFetch':
        if (m.outOfOrder === true && typeof m.segment === 'number') e.hurried.add(m.segment);
        return false;
      case 'segmentApplied': {
        const lane: Lane =
          m.from === 'store'
            ? 'store'
            : m.from === 'object'
              ? 'object'
              : m.lane === 'demand'
                ? e.hurried.has(Number(m.index))
                  ? 'hurried'
                  : 'demand'
                : 'background';
        s.arrivals.t.push(t);
        s.arrivals.lane.push(LANES.indexOf(lane));
        s.arrivals.bytes.push(num(m.bytes) ?? 0);
        break;
      }
      case 'readUnblocked':
        s.held.t.push(t);
        s.held.ms.push(Math.round((num(m.ms) ?? 0) * 10) / 10);
        break;
      case 'vmDied':
        s.vm = 'died';
        s.error = errorOf(m.error);
        break;
      case 'sessionDetached':
        s.state = 'detached';
        s.drops.push({ t });
        break;
      case 'sessionReattached':
        s.state = 'running';
        s.peer = text(m.peer) || s.peer;
        s.reconnects.push({ t, peer: s.peer });
        break;
      case 'sessionLeft':
        s.state = 'detached';
        break;
      case 'sessionEnded':
        s.state = 'ended';
        if (s.vm !== 'died') s.vm = 'gone';
        if (m.error) s.error = errorOf(m.error);
        this.live.delete(id);
        this.ended.unshift(e);
        this.ended.splice(this.keepEnded);
        break;
      default:
        return false;
    }
    this.changed.add(id);
    return true;
  }

  private entry(id: string, m: Record<string, unknown>, adopted: boolean): Entry {
    return {
      t0: this.now(),
      hurried: new Set(),
      snap: {
        id,
        client: text(m.client),
        peer: text(m.peer),
        policy: text(m.policy),
        base: text(m.base),
        segments: num(m.segments) ?? 0,
        overlayBytes: num(m.overlayBytes) ?? 0,
        startedAt: this.wall(),
        state: adopted ? 'detached' : 'running',
        vm: adopted ? 'running' : 'starting',
        resumedMs: adopted ? num(m.resumedMs) : null,
        firstResponseMs: null,
        completeMs: adopted ? num(m.appliedMs) : null,
        arrivals: { t: [], lane: [], bytes: [] },
        held: { t: [], ms: [] },
        reconnects: [],
        drops: [],
        adopted,
        error: null,
      },
    };
  }

  /** Every session this board knows: live ones first, then the ended, newest first. */
  all(): SessionSnapshot[] {
    return [...this.live.values(), ...this.ended].map((e) => e.snap);
  }

  /** The sessions changed since the last call (ended ones included), and forgets them. */
  takeChanged(): SessionSnapshot[] {
    const out: SessionSnapshot[] = [];
    for (const id of this.changed) {
      const e = this.live.get(id) ?? this.ended.find((x) => x.snap.id === id);
      if (e) out.push(e.snap);
    }
    this.changed.clear();
    return out;
  }
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function text(v: unknown): string {
  return typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '';
}

function errorOf(e: unknown): { code: string; message: string } {
  const x = e as { code?: unknown; message?: unknown } | null;
  return { code: text(x?.code) || 'VMS_INTERNAL', message: (text(x?.message) || text(e)).slice(0, 500) };
}
