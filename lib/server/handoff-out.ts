/**
 * The source's side of a handoff (vmsynth-handoff/1): moves a session's
 * running VM to another cloudlet. It offers the session (the overlay's
 * manifest, the client's secret hash); sends the overlay segments the
 * target's store and object store lack (from this cloudlet's store); once
 * the target holds the overlay, sends pre-copy passes of what the VM changed
 * since synthesis until one is small for the link (its time at the rate the
 * last pass went at is under `stopMs`, or passes stop shrinking, or
 * `maxPasses`); then holds new offload requests, lets those running finish,
 * stops the VM, and sends the last pass with the device state and the
 * request log. The target resumes before that pass has arrived, and asks
 * for what a guest read waits on first. Then the client is told where the
 * session went (`moved`), and the session ends here.
 *
 * Until the target resumes, a failure leaves the VM running here (resumed
 * if it was stopped, the held requests run). After it, the VM is the
 * target's: if the link fails before the target holds every chunk, the VM
 * there cannot finish (docs/DESIGN-NOTES.md, "Live handoff").
 */
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { connect } from '../client/connect.js';
import type { DeltaPass, DeltaSegment } from '../handoff/delta.js';
import { FramedSocket } from '../protocol/framed-socket.js';
import {
  encodeFinal,
  encodeTables,
  HANDOFF_PROTOCOL,
  parseTargetMessage,
  type DeltaTable,
  type TargetMessage,
} from '../protocol/handoff-messages.js';
import { FRAME_CAPS } from '../protocol/messages.js';
import { manifestOverlayId } from '../store/segment-store.js';
import { HandoffCapture } from '../synth/handoff-capture.js';
import type { SynthSession } from '../synth/session.js';
import { PeerLink } from './peer-link.js';
import type { ServedSession } from './served-session.js';

export interface HandoffTuning {
  /** Pre-copy passes at most before the stop (default 8). */
  maxPasses: number;
  /** Stop once the next pass would take this long on the link (default 200 ms). */
  stopMs: number;
  /** How long requests running at the stop may take to finish (default 30 s). */
  quiesceMs: number;
}

export const DEFAULT_TUNING: HandoffTuning = { maxPasses: 8, stopMs: 200, quiesceMs: 30_000 };

export interface HandoffOutOptions {
  served: ServedSession;
  synth: SynthSession;
  to: { host: string; port: number };
  /** This cloudlet's name (the target's logs), and the token the target wants, if any. */
  name: string;
  token?: string;
  /** An overlay segment from this cloudlet's store, or null. */
  storedSegment(index: number): Promise<Buffer | null>;
  keepaliveMs: number;
  tuning?: Partial<HandoffTuning>;
  /** The safe mode: the target resumes only once it holds every chunk (the stop lasts the last pass's transfer too). */
  whole?: boolean;
}

export interface HandoffReport {
  /** The session's id on the target. */
  session: string;
  to: string;
  passes: Array<{ bytes: number; chunks: number; ms: number; level: number }>;
  /** The last pass (after the stop), the device state, and the request log's bytes. */
  final: { bytes: number; chunks: number; deviceStateBytes: number };
  overlaySegmentsSent: number;
  /** Everything sent to the target, frames included. */
  bytesSent: number;
  /** Stop to the target's VM running, and the whole handoff. */
  stoppedMs: number;
  totalMs: number;
  demandFetches: number;
}

/** zstd level for a link this fast (bytes/ms): harder on slow links, where bytes cost more than CPU. */
export function levelFor(bytesPerMs: number | null): number {
  if (bytesPerMs === null) return 3;
  if (bytesPerMs < 2_500) return 9; // under ~20 Mbit/s
  if (bytesPerMs < 25_000) return 3;
  return 1;
}

/** A pass's segment tables, as `pass` and `final` carry them. */
export function tablesOf(p: DeltaPass): DeltaTable[] {
  return p.segments.map((s) => {
    const { offset: _offset, ...info } = s.info;
    return { index: s.index, ...info };
  });
}

/** Waits for the target's messages by type; the link's end rejects every wait. */
class Inbox {
  private readonly waiting = new Map<string, Array<(m: TargetMessage) => void>>();
  private readonly got: TargetMessage[] = [];
  private failure: VmsynthError | null = null;
  private readonly failures = new Set<(e: VmsynthError) => void>();

  put(m: TargetMessage): void {
    const list = this.waiting.get(m.type);
    const take = list?.shift();
    if (take) take(m);
    else this.got.push(m);
  }

  next<T extends TargetMessage['type']>(
    type: T,
    pred?: (m: Extract<TargetMessage, { type: T }>) => boolean,
  ): Promise<Extract<TargetMessage, { type: T }>> {
    type M = Extract<TargetMessage, { type: T }>;
    const i = this.got.findIndex((m) => m.type === type && (!pred || pred(m as M)));
    if (i >= 0) return Promise.resolve(this.got.splice(i, 1)[0] as M);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<M>((resolve, reject) => {
      const take = (m: TargetMessage) => {
        this.failures.delete(reject);
        if (pred && !pred(m as M)) return void this.next(type, pred).then(resolve, reject);
        resolve(m as M);
      };
      this.failures.add(reject);
      const list = this.waiting.get(type) ?? [];
      list.push(take);
      this.waiting.set(type, list);
    });
  }

  fail(err: VmsynthError): void {
    this.failure ??= err;
    for (const reject of this.failures) reject(err);
    this.failures.clear();
  }
}

/** Moves the session's VM to `to`; resolves once it runs there and the client was told. */
export async function handOff(o: HandoffOutOptions): Promise<HandoffReport> {
  const tuning = { ...DEFAULT_TUNING, ...o.tuning };
  const { served, synth } = o;
  const to = `${o.to.host}:${o.to.port}`;
  const t0 = performance.now();
  const step = (name: string, extra: Record<string, unknown> = {}) =>
    publish('handoff', { session: synth.id, role: 'source', peer: to, step: name, ...extra });
  HandoffCapture.check(synth);
  const offer = served.offer;
  if (!offer.manifest)
    throw new VmsynthError('VMS_HANDOFF', `session ${synth.id} kept no manifest to offer`, {
      details: { step: 'offer' },
    });
  const socket = await connect(o.to.host, o.to.port);
  const inbox = new Inbox();
  let demanded: (segments: number[]) => void = () => undefined;
  let overlaySent = 0;
  let demandFetches = 0;
  const link: PeerLink<TargetMessage> = new PeerLink(
    new FramedSocket(socket, FRAME_CAPS.greeting, {
      frame: () => undefined,
      invalid: () => undefined,
      closed: () => undefined,
    }),
    {
      parse: parseTargetMessage,
      peer: `the target cloudlet ${to}`,
      keepaliveMs: o.keepaliveMs,
      ended: (err) => inbox.fail(err ?? new VmsynthError('VMS_HANDOFF', 'the handoff ended')),
      message: (m) => {
        if (m.type === 'want') void sendOverlay(m.segments);
        else if (m.type === 'dwant') {
          demandFetches += m.segments.length;
          demanded(m.segments);
        } else inbox.put(m);
      },
    },
  );
  const sendOverlay = async (segments: number[]) => {
    for (const index of segments) {
      const data = index < synth.launch.overlaySegments ? await o.storedSegment(index) : null;
      if (!data)
        return link.end(
          new VmsynthError('VMS_HANDOFF', `the source holds no copy of overlay segment ${index} (its store has none)`, {
            details: { step: 'overlay', segment: index },
          }),
        );
      overlaySent++;
      await link.send({ type: 'segment', index }, data);
    }
  };
  const capture = new HandoffCapture(synth);
  let stopped = false;
  let resumedThere = false;
  try {
    await link.send({
      type: 'hello',
      protocol: HANDOFF_PROTOCOL,
      client: o.name,
      ...(o.token ? { token: o.token } : {}),
    });
    // A refusal (at the hello: B wants a token we lack; at the offer: no base, full, key not trusted).
    const refused = (err: unknown): never => {
      const e = asVmsynthError(err);
      const targetCode = (e.details as { peerCode?: string }).peerCode;
      throw targetCode
        ? new VmsynthError('VMS_HANDOFF_REFUSED', `${to} refused the handoff: ${e.message}; the VM goes on here`, {
            details: { step: 'offer', targetCode },
          })
        : e;
    };
    await inbox.next('welcome').catch(refused);
    // The overlay by id first: B's store may keep its manifest (most of an offer's bytes).
    const offerHeader = {
      type: 'offer',
      session: synth.id,
      client: offer.client,
      policy: offer.policy,
      secretSha256: offer.secretSha256,
      overlayId: manifestOverlayId(offer.manifest),
      ...(offer.overlayUrl ? { overlayUrl: offer.overlayUrl } : {}),
      // (B starts its domain with it while pre-copy runs: the stop then only loads the devices.)
      genid: synth.vm.restored?.spec.genid ?? null,
    };
    const acceptance = inbox.next('accepted');
    const manifestWanted = inbox.next('manifest');
    manifestWanted.catch(() => undefined); // (unanswered when B accepts at once)
    await link.send(offerHeader);
    if ((await Promise.race([acceptance, manifestWanted]).catch(refused)).type === 'manifest')
      await link.send(offerHeader, offer.manifest);
    const accepted = await acceptance.catch(refused);
    step('accepted', { detail: `session ${accepted.session} there` });
    await inbox.next('complete');
    step('the target holds the overlay', {
      ms: Math.round(performance.now() - t0),
      detail: `${overlaySent} segments from here`,
    });

    // Pre-copy: passes while the VM runs, until one is small for the link.
    const passes: HandoffReport['passes'] = [];
    let rate: number | null = null; // bytes per ms, as the last pass went
    for (let n = 0; n < tuning.maxPasses; n++) {
      const level = levelFor(rate);
      const p = await capture.pass(level);
      const t = performance.now();
      await sendPass(link, n, p);
      await inbox.next('applied', (m) => m.pass === n);
      const ms = performance.now() - t;
      if (p.bytes >= 64 << 10) rate = p.bytes / Math.max(1, ms); // (a smaller pass times the round trip, not the link)
      const chunks = p.kinds.reduce((a, b) => a + b, 0);
      passes.push({ bytes: p.bytes, chunks, ms: Math.round(ms), level });
      step(`pass ${n + 1}`, { ms: Math.round(ms), detail: `${chunks} chunks, ${p.bytes} bytes, zstd ${level}` });
      const prev = passes.at(-2);
      if (rate === null ? p.bytes < 64 << 10 : p.bytes / rate < tuning.stopMs) break; // small for the link
      if (prev && p.bytes > 0.8 * prev.bytes) break; // not converging: the VM writes as fast as we send
    }

    // The stop: no request runs, the VM pauses, the last pass and the device state go.
    await served.quiesce(tuning.quiesceMs);
    const tStop = performance.now();
    stopped = true; // (from here a failure continues the VM: `cont` on a VM that runs is harmless)
    const state = await capture.stop();
    const last = await capture.pass(levelFor(rate));
    await link.send(
      { type: 'final', pass: passes.length, ...(o.whole ? { whole: true } : {}) },
      encodeFinal({
        deviceState: state.deviceState,
        genid: state.genid,
        tables: tablesOf(last),
        log: served.log.snapshot(),
      }),
    );
    step('stopped', {
      ms: Math.round(performance.now() - tStop),
      detail: `last pass ${last.bytes} bytes, device state ${state.deviceState.length} bytes`,
    });
    const queue = [...last.segments];
    demanded = (segments) => {
      for (const s of segments) {
        const i = queue.findIndex((q) => q.index === s);
        if (i > 0) queue.unshift(...queue.splice(i, 1));
      }
    };
    const sending = (async () => {
      for (let seg: DeltaSegment | undefined; (seg = queue.shift()) && link.open;)
        await link.send({ type: 'dsegment', index: seg.index }, seg.data);
    })();
    const resumed = await inbox.next('resumed');
    resumedThere = true;
    const stoppedMs = Math.round(performance.now() - tStop);
    step('resumed there', { ms: stoppedMs, detail: `the VM ran there ${resumed.ms} ms into its session` });
    await served.moved({ host: o.to.host, port: o.to.port, session: accepted.session });
    await sending;
    await inbox.next('done');
    const report: HandoffReport = {
      session: accepted.session,
      to,
      passes,
      final: {
        bytes: last.bytes,
        chunks: last.kinds.reduce((a, b) => a + b, 0),
        deviceStateBytes: state.deviceState.length,
      },
      overlaySegmentsSent: overlaySent,
      bytesSent: link.bytes.out,
      stoppedMs,
      totalMs: Math.round(performance.now() - t0),
      demandFetches,
    };
    step('done', { ms: report.totalMs, detail: `${report.bytesSent} bytes sent` });
    link.end(null);
    return report;
  } catch (err) {
    const e = asVmsynthError(err);
    link.end(e);
    if (!resumedThere) {
      // The VM is still ours: it goes on here, with the requests that waited.
      if (stopped) await capture.resumeHere().catch(() => undefined);
      served.unquiesce();
      const why =
        e.code === 'VMS_HANDOFF_REFUSED' || e.code === 'VMS_HANDOFF'
          ? e
          : new VmsynthError('VMS_HANDOFF', `the handoff to ${to} failed: ${e.message}; the VM goes on here`, {
              details: { step: stopped ? 'stopped' : 'pre-copy', cause: e.code },
              cause: e,
            });
      step('failed', { error: why, detail: 'the VM goes on here' });
      throw why;
    }
    const why = new VmsynthError('VMS_HANDOFF', `the link to ${to} failed after the VM resumed there: ${e.message}`, {
      details: { step: 'post-copy', cause: e.code },
      cause: e,
    });
    step('failed', { error: why, detail: 'after the target resumed: the VM there may not finish' });
    throw why;
  } finally {
    await capture.close();
  }
}

async function sendPass(link: PeerLink<TargetMessage>, n: number, p: DeltaPass): Promise<void> {
  await link.send({ type: 'pass', pass: n }, encodeTables(tablesOf(p)));
  for (const s of p.segments) await link.send({ type: 'dsegment', index: s.index }, s.data);
}
