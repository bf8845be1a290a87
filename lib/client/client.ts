/**
 * The mobile side of the vmsynth protocol: hand a synthesis server an overlay, answer
 * its segment requests from the local overlay files, send the first offload
 * request as soon as the VM is ready, and keep a timeline of it all.
 *
 * Segment requests come on two lanes; a demand request is served before
 * any background segment not yet started (segments are never interleaved).
 * At most one segment sits in the socket's user-space buffer at a time, so a
 * demand request waits behind at most one segment plus what the kernel
 * buffers. Usable from any Node program: `synthesize()` is the whole API.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { MANIFEST_FILE, SEGMENTS_FILE } from '../overlay/format.js';
import { Overlay } from '../overlay/reader.js';
import { FramedSocket } from '../protocol/framed-socket.js';
import { FRAME_CAPS, parseServerMessage, PROTOCOL, type ServerMessage } from '../protocol/messages.js';
import { connect, parseServer, serverError } from './connect.js';
import type { RunningSession, SegmentSend, SynthesizeOptions, SynthesizeResult, Timeline } from './types.js';

export { parseServer } from './connect.js';
export type * from './types.js';

/** Runs one synthesis session against a server; resolves after the server confirmed the teardown. */
export async function synthesize(opts: SynthesizeOptions): Promise<SynthesizeResult> {
  const t0 = performance.now();
  const at = () => Math.round(performance.now() - t0);
  const { host, port } = parseServer(opts.server);
  const dir = path.resolve(opts.overlay);
  // The client checks the signature against the key the manifest carries; the server checks trust.
  const overlay = await Overlay.open(dir, { trusted: null });
  const manifest = await fsp.readFile(path.join(dir, MANIFEST_FILE));
  const segments = await fsp.open(path.join(dir, SEGMENTS_FILE), 'r');
  const segs = overlay.body.segments;
  const policy = opts.policy ?? 'early-start';
  const waitComplete = opts.waitComplete ?? policy !== 'demand-only';
  const request = opts.request ?? { method: 'GET', path: '/run' };
  const timeline: Timeline = {
    connected: null,
    accepted: null,
    resumed: null,
    firstResponse: null,
    overlayComplete: null,
    finished: null,
  };
  const mark = (step: keyof Timeline) => {
    timeline[step] ??= at();
    opts.onEvent?.({ type: 'timeline', step, ms: timeline[step] });
  };

  const socket = await connect(host, port, opts.signal, opts.tls).catch(async (err: unknown) => {
    await segments.close(); // the session, which closes it otherwise, never starts
    throw err;
  });
  mark('connected');

  return new Promise<SynthesizeResult>((resolve, reject) => {
    let session = '';
    let baseName = '';
    let firstResponse: SynthesizeResult['firstResponse'] | null = null;
    let bytesSent = 0;
    let segmentsSent = 0;
    let before = { bytes: 0, segments: 0 };
    let demandRequests = 0;
    let hurried = 0;
    const sends: SegmentSend[] = [];
    const demand: number[] = [];
    const background: number[] = [];
    const attempts = new Map<number, number>();
    let sending = false;
    let paceUntil = 0;
    let done = false;
    let finishing = false;

    const finish = (err: Error | null, result?: SynthesizeResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      void segments.close();
      for (const r of replies.values()) r.reject(err ?? new VmsynthError('VMS_PEER_GONE', 'the session ended'));
      replies.clear();
      if (err) {
        if (io.open)
          io.send({
            type: 'error',
            code: err instanceof VmsynthError ? err.code : 'VMS_INTERNAL',
            message: err.message.slice(0, 4000),
          });
        io.end(500);
        reject(err);
      } else {
        io.end(500);
        resolve(result!);
      }
    };
    const onAbort = () => finish(new VmsynthError('VMS_INTERRUPTED', 'synthesis cancelled'));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timeoutMs = opts.timeoutMs ?? 600_000;
    const timer = setTimeout(
      () => finish(new VmsynthError('VMS_GUEST_TIMEOUT', `the session did not finish within ${timeoutMs} ms`)),
      timeoutMs,
    );

    const io = new FramedSocket(socket, FRAME_CAPS.greeting, {
      frame: (f) => {
        let m: ServerMessage;
        try {
          m = parseServerMessage(f);
        } catch (err) {
          finish(err as Error);
          return;
        }
        onMessage(m);
      },
      invalid: (err) => finish(err),
      closed: (err) =>
        finish(
          new VmsynthError(
            'VMS_PEER_GONE',
            `the server closed the connection${err ? ` (${err.message})` : ''}${finishing ? ' before confirming the teardown' : ''}`,
          ),
        ),
    });

    const replies = new Map<
      number,
      { resolve: (r: { status: number; body: Buffer }) => void; reject: (e: Error) => void }
    >();
    let nextId = 2;
    const running: RunningSession = {
      get session() {
        return session;
      },
      offload: (req) =>
        new Promise((resolve, reject) => {
          if (done) return reject(new VmsynthError('VMS_PEER_GONE', 'the session has ended'));
          const id = nextId++;
          replies.set(id, { resolve, reject });
          io.send({ type: 'offload', id, method: req.method, path: req.path }, req.body);
        }),
    };
    const maybeFinish = () => {
      if (finishing || !firstResponse || (waitComplete && timeline.overlayComplete === null)) return;
      finishing = true;
      const hook = opts.whileRunning ? opts.whileRunning(running) : Promise.resolve();
      hook.then(
        () => {
          if (!done) io.send({ type: 'finish' });
        },
        (err: unknown) => finish(err as Error),
      );
    };

    const pump = async () => {
      if (sending) return;
      sending = true;
      try {
        while (!done) {
          if (opts.maxBytesPerSecond) {
            const wait = paceUntil - performance.now();
            if (wait > 0) await new Promise((r) => setTimeout(r, wait));
            if (done) break;
          }
          const lane = demand.length ? 'demand' : 'background';
          if (
            lane === 'background' &&
            !firstResponse &&
            opts.holdBackgroundAfterBytes !== undefined &&
            bytesSent >= opts.holdBackgroundAfterBytes
          )
            break;
          const index = demand.length ? demand.shift() : background.shift();
          if (index === undefined) break;
          const s = segs[index]!;
          let data: Buffer = Buffer.allocUnsafe(s.bytes);
          const { bytesRead } = await segments.read(data, 0, s.bytes, s.offset);
          if (bytesRead !== s.bytes)
            throw new VmsynthError('VMS_OVERLAY_CORRUPT', `${SEGMENTS_FILE} ends inside segment ${index}`);
          const attempt = (attempts.get(index) ?? 0) + 1;
          attempts.set(index, attempt);
          if (opts.tamper) data = opts.tamper(index, data, attempt);
          if (done) break;
          io.send({ type: 'segment', index }, data);
          sends.push({ ms: at(), index, lane, bytes: s.bytes });
          bytesSent += s.bytes;
          segmentsSent++;
          if (opts.maxBytesPerSecond)
            paceUntil = Math.max(paceUntil, performance.now()) + (s.bytes / opts.maxBytesPerSecond) * 1000;
          opts.onEvent?.({
            type: 'segment',
            index,
            lane,
            sent: segmentsSent,
            total: segs.length,
            bytesSent,
            overlayBytes: overlay.segmentsBytes,
          });
          await io.drained();
        }
      } catch (err) {
        finish(err as Error);
      } finally {
        sending = false;
      }
    };

    /** Removes segment `i` from the background lane; false when it was not waiting there. */
    const takeFromBackground = (i: number): boolean => {
      const k = background.indexOf(i);
      if (k < 0) return false;
      background.splice(k, 1);
      return true;
    };

    const onMessage = (m: ServerMessage) => {
      switch (m.type) {
        case 'welcome':
          io.setMaxFrameBytes(FRAME_CAPS.session);
          io.send({ type: 'session', policy }, manifest);
          return;
        case 'accepted':
          session = m.session;
          baseName = m.base;
          io.setMaxFrameBytes(FRAME_CAPS.streaming);
          opts.onEvent?.({ type: 'accepted', session, base: baseName });
          mark('accepted');
          return;
        case 'want': {
          const bad = m.segments.find((i) => i >= segs.length);
          if (bad !== undefined)
            return finish(
              new VmsynthError('VMS_PROTOCOL', `the server asked for segment ${bad}; the overlay has ${segs.length}`),
            );
          if (m.lane === 'demand') {
            demandRequests += m.segments.length;
            demand.push(...m.segments);
            // A demand request jumps the queue: drop it from the background lane if it is there.
            for (const i of m.segments) takeFromBackground(i);
          } else {
            background.push(...m.segments);
          }
          void pump();
          return;
        }
        case 'hurry':
          // Segments asked for in the background that a blocked guest read needs: those not yet sent go next.
          // One already sent (or being sent) is not sent again.
          for (const i of m.segments) {
            if (!takeFromBackground(i)) continue;
            demand.push(i);
            hurried++;
          }
          void pump();
          return;
        case 'ready':
          mark('resumed');
          io.send({ type: 'offload', id: 1, method: request.method, path: request.path }, request.body);
          return;
        case 'reply':
          if (m.id !== 1) {
            replies.get(m.id)?.resolve({ status: m.status, body: m.body });
            replies.delete(m.id);
            return;
          }
          if (firstResponse) return;
          mark('firstResponse');
          before = { bytes: bytesSent, segments: segmentsSent };
          firstResponse = { status: m.status, body: m.body.toString('utf8') };
          if (opts.holdBackgroundAfterBytes !== undefined) void pump();
          maybeFinish();
          return;
        case 'complete':
          mark('overlayComplete');
          maybeFinish();
          return;
        case 'finished':
          mark('finished');
          return finish(null, {
            server: `${host}:${port}`,
            session,
            base: baseName,
            policy,
            timeline,
            firstResponse: firstResponse!,
            overlayBytes: overlay.segmentsBytes,
            segments: segs.length,
            segmentsSent,
            bytesSent,
            bytesSentBeforeFirstResponse: before.bytes,
            segmentsSentBeforeFirstResponse: before.segments,
            demandRequests,
            hurried,
            sends,
            serverStats: m.stats,
          });
        case 'error':
          if (m.fatal || !firstResponse) return finish(serverError(m.code, m.message));
          return;
      }
    };

    io.send({
      type: 'hello',
      protocol: PROTOCOL,
      client: `vmsynth ${VMSYNTH_VERSION}`,
      ...(opts.token !== undefined ? { token: opts.token } : {}),
    });
  });
}
