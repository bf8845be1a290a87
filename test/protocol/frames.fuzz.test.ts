/**
 * Fuzzing the frame decoder and the message parsers (ops issue: at least
 * 10,000 inputs each, time-boxed; every input ends in a typed error or valid
 * frames/messages: no crash, no hang).
 *
 * Frame decoder (FrameDecoder.push, decodeFrameBody): random byte streams,
 * streams of random frames, real frames with mutations, real frames followed
 * by garbage, and frame bodies with well-formed headers holding wild field
 * values, each under random stage caps and cut into random pieces (single
 * bytes included). Checked for every input: only VMS_PROTOCOL or
 * VMS_FRAME_TOO_LARGE is thrown; the frames yielded are exactly the frames at
 * the front of the stream; the outcome does not depend on how the stream was
 * cut; valid frames in front of garbage are all yielded; an oversized frame is
 * refused from its prefix; the decoder's time stays linear; and decoding
 * leaves no state behind (a canary frame decodes the same after every input).
 *
 * Messages (parseClientMessage, parseServerMessage): headers of every message
 * type with each field either in its domain or wild, checked against the
 * message table of docs/protocol.md: accepted exactly when the spec allows
 * it, and then carrying exactly the header's fields and the payload.
 *
 * Then a few hundred of these streams go through a real FramedSocket over
 * TCP on 127.0.0.1.
 */
import t from 'tap';
import fc from 'fast-check';
import { deepStrictEqual } from 'node:assert';
import net from 'node:net';
import { once } from 'node:events';
import { VmsynthError } from '../../lib/core/errors.js';
import { packr } from '../../lib/core/msgpack.js';
import {
  decodeFrameBody,
  encodeFrame,
  FrameDecoder,
  MAX_HEADER_BYTES,
  type Frame,
  type FrameHeader,
  type FrameLimits,
} from '../../lib/protocol/frames.js';
import { FramedSocket } from '../../lib/protocol/framed-socket.js';
import { FRAME_CAPS, parseClientMessage, parseServerMessage, POLICIES } from '../../lib/protocol/messages.js';
import {
  MIN_INPUTS,
  cuts,
  edgeValue,
  expectTyped,
  fuzzParams,
  mutate,
  mutation,
  scaled,
  seed,
  soup,
  split,
  Tally,
  wild,
} from '../helpers/fuzz.js';

t.comment(`fuzz seed ${seed} (FUZZ_SEED=${seed} replays this run)`);

const FRAME_CODES = new Set(['VMS_PROTOCOL', 'VMS_FRAME_TOO_LARGE']);
const MESSAGE_CODES = new Set(['VMS_PROTOCOL']);
/** Slowest one input may be (generous for GC pauses on a loaded CI machine; a quadratic decoder takes seconds). */
const INPUT_MS = 500;

const frameBytes = (header: Record<string, unknown>, payload?: Uint8Array) =>
  Buffer.concat(encodeFrame(header as FrameHeader, payload));
const prefixed = (len: number, body: Uint8Array) => {
  const b = Buffer.alloc(4 + body.length);
  b.writeUInt32BE(len >>> 0, 0);
  b.set(body, 4);
  return b;
};

// ---- checking what a decoder yields -------------------------------------------------------

interface Outcome {
  frames: Frame[];
  error: VmsynthError | null;
  pending: number;
}

/** Feeds `stream` to a new decoder (whole, or cut by `sizes`), up to its first error. */
function feed(stream: Buffer, limits: FrameLimits, sizes?: readonly number[]): Outcome {
  const dec = new FrameDecoder(limits);
  const frames: Frame[] = [];
  const fail = (err: unknown): Outcome => ({
    frames,
    error: expectTyped(err, FRAME_CODES, 'FrameDecoder.push'),
    pending: dec.pending,
  });
  for (const chunk of sizes ? split(stream, sizes) : [stream]) {
    try {
      frames.push(...dec.push(chunk));
    } catch (err) {
      return fail(err);
    }
  }
  // A decoder may hold an error found behind the frames it returned until the next push.
  try {
    if (dec.push(Buffer.alloc(0)).length) throw new Error('an empty push yielded frames');
  } catch (err) {
    return fail(err);
  }
  return { frames, error: null, pending: dec.pending };
}

/**
 * The frames must be exactly those at the front of `stream` (prefix, header as
 * MessagePack, payload of payloadBytes bytes) within the limits; the error, if
 * any, must be what the next frame is. Returns how many bytes the frames cover.
 */
function checkAgainstStream(o: Outcome, stream: Buffer, limits: FrameLimits): number {
  const cap = limits.maxFrameBytes ?? 512 << 20;
  const maxHeader = limits.maxHeaderBytes ?? MAX_HEADER_BYTES;
  let off = 0;
  for (const f of o.frames) {
    const h = f.header as Record<string, unknown>;
    if (stream.length - off < 4) throw new Error('a frame was yielded beyond the stream');
    const len = stream.readUInt32BE(off);
    const p = f.payload.length;
    if (len > cap || len === 0) throw new Error(`a frame of ${len} bytes was yielded under a cap of ${cap}`);
    if (off + 4 + len > stream.length) throw new Error('a frame was yielded before it was complete');
    if (len - p > maxHeader)
      throw new Error(`a header of ${len - p} bytes was yielded under a header cap of ${maxHeader}`);
    if (!h || typeof h !== 'object' || Array.isArray(h) || Buffer.isBuffer(h))
      throw new Error('a yielded header is not a map');
    if (typeof h.type !== 'string' || h.type.length === 0) throw new Error('a yielded header has no type');
    if ((h.payloadBytes ?? 0) !== p) throw new Error(`payloadBytes ${String(h.payloadBytes)} but a ${p}-byte payload`);
    if (!f.payload.equals(stream.subarray(off + 4 + len - p, off + 4 + len)))
      throw new Error('the payload is not the bytes at the end of the frame');
    deepStrictEqual(
      h,
      packr.unpack(stream.subarray(off + 4, off + 4 + len - p)),
      'the header is not the MessagePack at the start of the frame',
    );
    off += 4 + len;
  }
  const rest = stream.length - off;
  const next = rest >= 4 ? stream.readUInt32BE(off) : -1;
  if (o.error?.code === 'VMS_FRAME_TOO_LARGE' && !(next > cap))
    throw new Error(`FRAME_TOO_LARGE for a ${next}-byte frame under a cap of ${cap}`);
  if (next > cap && o.error?.code !== 'VMS_FRAME_TOO_LARGE')
    throw new Error(`a ${next}-byte frame under a cap of ${cap} was not refused`);
  if (!o.error && next >= 0 && next <= cap && 4 + next <= rest)
    throw new Error('a complete frame was neither yielded nor refused');
  if (!o.error && o.pending !== rest) throw new Error(`${o.pending} bytes pending, ${rest} expected`);
  return off;
}

function sameOutcome(a: Outcome, b: Outcome): void {
  deepStrictEqual(a.frames, b.frames, 'the frames depend on how the stream was cut');
  if ((a.error?.code ?? null) !== (b.error?.code ?? null))
    throw new Error(`error ${a.error?.code} whole, ${b.error?.code} when cut`);
}

const canaryBytes = frameBytes({ type: 'segment', index: 7, list: [1, 'two', { three: 3 }] }, Buffer.from('canary'));
const canaryFrames = new FrameDecoder().push(canaryBytes);
/** Decoding leaves no state behind: the canary frame decodes the same after any input. */
function canary(): void {
  deepStrictEqual(
    new FrameDecoder().push(canaryBytes),
    canaryFrames,
    'the canary frame decodes differently after a fuzz input',
  );
}

// ---- the message table of docs/protocol.md, as an oracle ----------------------------------

type Check = (v: unknown) => boolean;
const s: Check = (v) => typeof v === 'string' && v.length <= 4096; // (4096: the implementation's cap on strings)
const u: Check = (v) => Number.isSafeInteger(v) && (v as number) >= 0;
const policy: Check = (v) => (POLICIES as readonly unknown[]).includes(v);
const list: Check = (v) => Array.isArray(v) && v.length >= 1 && v.length <= 8192 && v.every(u);
const ids: Check = (v) => Array.isArray(v) && v.length <= 8192 && v.every(u);
const secret: Check = (v) => v instanceof Uint8Array && v.length === 32;
interface Spec {
  fields: Record<string, Check>;
  optional?: Record<string, Check>;
  payload: 'none' | 'allowed' | 'required';
  as?: string;
}
const CLIENT: Record<string, Spec> = {
  hello: { fields: { protocol: s, client: s }, optional: { token: s }, payload: 'none' },
  session: {
    fields: { policy },
    optional: { overlayUrl: s, lookaside: (v) => typeof v === 'boolean' },
    payload: 'required',
    as: 'manifest',
  },
  segment: {
    fields: { index: u },
    optional: { offset: u, thin: (v) => typeof v === 'boolean' },
    payload: 'required',
    as: 'data',
  },
  table: { fields: { index: u }, payload: 'required', as: 'data' },
  offload: {
    fields: {
      id: u,
      method: (v) => v === 'GET' || v === 'POST' || v === 'PUT',
      path: (v) => s(v) && (v as string).startsWith('/'),
    },
    payload: 'allowed',
    as: 'body',
  },
  resume: { fields: { session: s, secret }, payload: 'none' },
  ack: { fields: { ids: list }, payload: 'none' },
  ping: { fields: {}, payload: 'none' },
  finish: { fields: {}, payload: 'none' },
  error: { fields: { code: s, message: s }, payload: 'none' },
};
const SERVER: Record<string, Spec> = {
  welcome: { fields: { protocol: s, server: s, keepaliveMs: u, graceMs: u }, payload: 'none' },
  accepted: { fields: { session: s, secret, base: s, segments: u, policy }, payload: 'none' },
  resumed: {
    fields: { session: s, base: s, segments: u, policy, replies: ids, running: ids },
    optional: { resumedMs: u, appliedMs: u, partialIndex: u, partialBytes: u },
    payload: 'none',
  },
  want: { fields: { lane: (v) => v === 'demand' || v === 'background', segments: list }, payload: 'none' },
  hurry: { fields: { segments: list }, payload: 'none' },
  tables: { fields: { segments: list }, payload: 'none' },
  thin: {
    fields: { segment: u, lane: (v) => v === 'demand' || v === 'background' },
    payload: 'required',
    as: 'omit',
  },
  ping: { fields: {}, payload: 'none' },
  ready: { fields: { resumedMs: u }, payload: 'none' },
  reply: { fields: { id: u, status: u }, payload: 'allowed', as: 'body' },
  complete: { fields: { appliedMs: u }, payload: 'none' },
  finished: {
    fields: { stats: (v) => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) },
    payload: 'none',
  }, // a map
  error: {
    fields: { code: s, message: s, fatal: (v) => typeof v === 'boolean' },
    optional: { id: u },
    payload: 'none',
  },
};

/** The message the spec makes of a frame, or null when it refuses it. */
function expected(table: Record<string, Spec>, f: Frame): Record<string, unknown> | null {
  const h = f.header as Record<string, unknown>;
  const spec = Object.hasOwn(table, h.type as string) ? table[h.type as string]! : undefined;
  if (!spec) return null;
  for (const [k, ok] of Object.entries(spec.fields)) if (!ok(h[k])) return null;
  for (const [k, ok] of Object.entries(spec.optional ?? {})) if (h[k] !== undefined && !ok(h[k])) return null;
  if ((spec.payload === 'none' && f.payload.length > 0) || (spec.payload === 'required' && f.payload.length === 0))
    return null;
  const m: Record<string, unknown> = { type: h.type };
  for (const k of Object.keys(spec.fields)) m[k] = h[k];
  for (const k of Object.keys(spec.optional ?? {})) if (h[k] !== undefined) m[k] = h[k];
  if (spec.as) m[spec.as] = f.payload;
  return m;
}

let parseCalls = 0;
/** Both parsers on one frame: each gives what the spec says, or VMS_PROTOCOL when the spec refuses. */
function parseBoth(f: Frame, tally?: Tally): void {
  for (const [side, parse, table] of [
    ['client', parseClientMessage, CLIENT],
    ['server', parseServerMessage, SERVER],
  ] as const) {
    parseCalls++;
    const want = expected(table, f);
    let got: unknown;
    try {
      got = parse(f);
    } catch (err) {
      expectTyped(err, MESSAGE_CODES, `parse${side === 'client' ? 'Client' : 'Server'}Message`);
      if (want)
        throw new Error(`the ${side} parser refused a valid ${f.header.type} message: ${(err as Error).message}`, {
          cause: err,
        });
      tally?.add(`${side}: refused`);
      continue;
    }
    if (!want) throw new Error(`the ${side} parser accepted a ${f.header.type} message the spec refuses`);
    deepStrictEqual(got, want, `the ${side} parser's ${f.header.type} message is not the frame's`);
    tally?.add(`${side}: ${f.header.type}`);
  }
}

// ---- generators -------------------------------------------------------------------------

const bigList = new Array<number>(8193).fill(3);
/** Each message field's domain (valid values, and near misses). */
const domain: Record<string, fc.Arbitrary<unknown>> = {
  protocol: fc.constantFrom('vmsynth/2', 'vmsynth/3', ''),
  client: fc.string({ maxLength: 20 }),
  server: fc.string({ maxLength: 20 }),
  token: fc.string({ maxLength: 20 }),
  policy: fc.constantFrom(...POLICIES, 'fastest', 'Baseline'),
  index: fc.oneof(fc.nat(), fc.constantFrom(-1, 1.5, 2 ** 53)),
  id: fc.nat(),
  method: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'get'),
  path: fc.oneof(
    fc.constant('/'),
    fc.string({ maxLength: 20 }).map((p) => '/' + p),
    fc.string({ maxLength: 20 }),
    fc.constant('/' + 'x'.repeat(4096)),
  ),
  code: fc.constantFrom('VMS_PROTOCOL', 'VMS_BUSY', ''),
  message: fc.oneof(fc.string({ maxLength: 40 }), fc.constant('m'.repeat(4097))),
  session: fc.string({ maxLength: 20 }),
  base: fc.string({ maxLength: 20 }),
  segments: fc.oneof(
    fc.nat(),
    fc.array(fc.oneof(fc.nat(), edgeValue), { maxLength: 6 }),
    fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
    fc.constant(bigList),
  ),
  lane: fc.constantFrom('demand', 'background', 'sideways'),
  resumedMs: fc.nat(),
  status: fc.integer({ min: 100, max: 599 }),
  appliedMs: fc.nat(),
  stats: fc.oneof(fc.dictionary(fc.string({ maxLength: 8 }), wild, { maxKeys: 4 }), wild),
  fatal: fc.boolean(),
  keepaliveMs: fc.nat(),
  offset: fc.oneof(fc.nat(), fc.constant(-5)),
  overlayUrl: fc.oneof(fc.constant('s3://b/p'), fc.constant('x'.repeat(4097)), fc.nat()),
  lookaside: fc.oneof(fc.boolean(), fc.constant('yes')),
  thin: fc.oneof(fc.boolean(), fc.constant(1)),
  segment: fc.oneof(fc.nat(), fc.constant(-2)),
  partialIndex: fc.nat(),
  partialBytes: fc.oneof(fc.nat(), fc.constant('7')),
  graceMs: fc.oneof(fc.nat(), fc.constant(-1)),
  secret: fc.oneof(
    fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a)),
    fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
    fc.string({ minLength: 32, maxLength: 32 }),
  ),
  ids: fc.oneof(
    fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
    fc.constant([]),
    fc.array(fc.oneof(fc.nat(), edgeValue), { maxLength: 6 }),
    fc.constant(bigList),
  ),
  replies: fc.oneof(fc.array(fc.nat(), { maxLength: 6 }), fc.constant(bigList)),
  running: fc.oneof(fc.array(fc.nat(), { maxLength: 6 }), wild),
};
const TYPES = [...new Set([...Object.keys(CLIENT), ...Object.keys(SERVER)])];
const FIELDS_OF: Record<string, string[]> = Object.fromEntries(
  TYPES.map((ty) => [
    ty,
    [
      ...new Set(
        [CLIENT[ty], SERVER[ty]].flatMap((sp) =>
          sp ? [...Object.keys(sp.fields), ...Object.keys(sp.optional ?? {})] : [],
        ),
      ),
    ],
  ]),
);

/** A header of a protocol message type, each of its fields usually in its domain, sometimes wild or missing, plus stray fields. */
const messageHeader: fc.Arbitrary<Record<string, unknown>> = fc
  .oneof(
    {
      weight: 5,
      arbitrary: fc.constantFrom(...TYPES).chain((type) =>
        fc
          .record(
            Object.fromEntries(
              FIELDS_OF[type]!.map((k) => [
                k,
                fc.option(fc.oneof({ weight: 6, arbitrary: domain[k]! }, wild, edgeValue), {
                  nil: undefined,
                  freq: 8,
                }),
              ]),
            ),
          )
          .map((fields) => ({
            type,
            ...Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)),
          })),
      ),
    },
    fc.record({
      type: fc.oneof(
        fc.string({ minLength: 1, maxLength: 12 }),
        fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty'),
      ),
    }),
  )
  .chain((h) =>
    fc
      .dictionary(
        fc.string({ maxLength: 8 }).filter((k) => k !== 'type' && k !== 'payloadBytes' && !(k in h)),
        wild,
        { maxKeys: 2 },
      )
      .map((extra) => ({ ...extra, ...h })),
  );

const payload: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 3, arbitrary: fc.constant(Buffer.alloc(0)) },
  { weight: 3, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 300 }).map((a) => Buffer.from(a)) },
  fc.integer({ min: 1000, max: 12_000 }).map((n) => Buffer.alloc(n, 0x5a)),
);
const validFrame = fc.record({ header: messageHeader, payload });
type ValidFrame = { header: Record<string, unknown>; payload: Buffer };
const encode = (frames: readonly ValidFrame[]) => Buffer.concat(frames.map((f) => frameBytes(f.header, f.payload)));

/** Stage caps: mostly the real ones, sometimes tiny. */
const limits: fc.Arbitrary<FrameLimits> = fc.oneof(
  { weight: 2, arbitrary: fc.constant({}) },
  fc.record(
    {
      maxFrameBytes: fc.oneof(
        fc.constantFrom(FRAME_CAPS.greeting, FRAME_CAPS.session, FRAME_CAPS.streaming, 16, 100, 1000, 0),
        fc.nat(20_000),
      ),
      maxHeaderBytes: fc.oneof(fc.constant(MAX_HEADER_BYTES), fc.integer({ min: 1, max: 300 })),
    },
    { requiredKeys: [] },
  ),
);

const lengthClaim = fc.oneof(
  fc.nat(64),
  fc.nat(3000),
  fc.constantFrom(0, FRAME_CAPS.greeting, FRAME_CAPS.greeting + 1, 2 ** 29, 2 ** 32 - 1),
);
/** A frame of random bytes: a length prefix and (usually) that many bytes. */
const randomFrame: fc.Arbitrary<Buffer> = fc
  .tuple(lengthClaim, fc.uint8Array({ maxLength: 3000 }), fc.boolean())
  .map(([len, bytes, exact]) =>
    prefixed(
      len,
      exact
        ? Buffer.concat([bytes, Buffer.alloc(Math.max(0, Math.min(len, 3000) - bytes.length))]).subarray(
            0,
            Math.min(len, 3000),
          )
        : bytes,
    ),
  );
/** A frame whose header is raw MessagePack soup (absurd length claims, extension types, deep nesting), and a payload. */
const soupFrame: fc.Arbitrary<Buffer> = fc
  .tuple(soup, fc.uint8Array({ maxLength: 40 }))
  .map(([h, p]) => prefixed(h.length + p.length, Buffer.concat([h, p])));

/** What may follow valid frames. */
const garbage: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ minLength: 1, maxLength: 500 }).map((a) => Buffer.from(a)),
  randomFrame,
  soupFrame,
  fc.constantFrom(
    prefixed(0, Buffer.alloc(0)),
    prefixed(2 ** 32 - 1, Buffer.alloc(8)),
    prefixed(FRAME_CAPS.greeting + 1, Buffer.alloc(8)),
  ),
  fc
    .tuple(validFrame, fc.array(mutation, { minLength: 1, maxLength: 3 }))
    .map(([f, m]) => mutate(frameBytes(f.header, f.payload), m)),
);

// ---- running one input ------------------------------------------------------------------

interface Run {
  runs: number;
  slowestMs: number;
  frames: number;
  tally: Tally;
}
const newRun = (): Run => ({ runs: 0, slowestMs: 0, frames: 0, tally: new Tally() });
const report = (tt: { comment: (...a: unknown[]) => void }, name: string, run: Run) =>
  tt.comment(
    `${name}: ${run.runs} inputs, ${run.frames} frames yielded; slowest ${run.slowestMs.toFixed(1)} ms; outcomes: ${run.tally}`,
  );

/** One stream: whole and cut, checked against itself and the stream; returns the outcome of the cut feed. */
function judgeStream(run: Run, stream: Buffer, lim: FrameLimits, sizes: readonly number[], parse = false): Outcome {
  run.runs++;
  const t0 = performance.now();
  const cut = feed(stream, lim, sizes);
  const ms = performance.now() - t0;
  run.slowestMs = Math.max(run.slowestMs, ms);
  if (ms > INPUT_MS)
    throw new Error(
      `a ${stream.length}-byte stream cut in pieces of [${sizes.slice(0, 5)}...] took ${ms.toFixed(0)} ms`,
    );
  const whole = feed(stream, lim);
  sameOutcome(whole, cut);
  checkAgainstStream(cut, stream, lim);
  run.frames += cut.frames.length;
  run.tally.add(cut.error ? cut.error.code : cut.pending ? 'ends inside a frame' : 'ends at a frame boundary');
  if (parse) for (const f of cut.frames) parseBoth(f);
  canary();
  return cut;
}

// ---- the properties -----------------------------------------------------------------------

const N = scaled({ random: 2500, mutated: 3000, garbage: 2000, headers: 2500, messages: 10_000, socket: 300 });
const FRAME_TOTAL = N.random + N.mutated + N.garbage + N.headers;
let frameRuns = 0;

t.test(`${N.random} random byte streams and streams of random frames, cut anywhere, under random caps`, async (t) => {
  const run = newRun();
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 2000 }).map((a) => Buffer.from(a)),
        fc.array(fc.oneof(randomFrame, soupFrame), { minLength: 1, maxLength: 5 }).map((fs) => Buffer.concat(fs)),
      ),
      limits,
      cuts,
      (stream, lim, sizes) => {
        judgeStream(run, stream, lim, sizes, true);
      },
    ),
    fuzzParams(N.random, 20_000),
  );
  report(t, 'random', run);
  frameRuns += run.runs;
  t.equal(run.runs, N.random, `${N.random} streams, each typed errors or valid frames, the same however cut`);
});

t.test(`${N.mutated} streams of real frames with byte flips, truncations, insertions and length claims`, async (t) => {
  const run = newRun();
  fc.assert(
    fc.property(
      fc.array(validFrame, { minLength: 1, maxLength: 6 }),
      fc.array(mutation, { maxLength: 4 }),
      limits,
      cuts,
      (frames, muts, lim, sizes) => {
        judgeStream(run, mutate(encode(frames), muts), lim, sizes, true);
      },
    ),
    fuzzParams(N.mutated, 30_000),
  );
  report(t, 'mutated', run);
  frameRuns += run.runs;
  t.equal(run.runs, N.mutated, `${N.mutated} streams, each typed errors or valid frames, the same however cut`);
  t.ok(run.frames > N.mutated / 2, `and they yielded frames (${run.frames})`);
});

t.test(`${N.garbage} streams of real frames followed by garbage: every real frame is yielded`, async (t) => {
  const run = newRun();
  fc.assert(
    fc.property(
      fc.array(validFrame, { minLength: 1, maxLength: 5 }),
      garbage,
      fc.constantFrom(undefined, FRAME_CAPS.greeting),
      cuts,
      (frames, junk, cap, sizes) => {
        const lim = cap === undefined ? {} : { maxFrameBytes: cap };
        const o = judgeStream(run, Buffer.concat([encode(frames), junk]), lim, sizes, true);
        const want = frames.map((f) => new FrameDecoder().push(frameBytes(f.header, f.payload))[0]!);
        deepStrictEqual(
          o.frames.slice(0, want.length),
          want,
          'the real frames in front of the garbage were not all yielded',
        );
      },
    ),
    fuzzParams(N.garbage, 20_000),
  );
  report(t, 'garbage', run);
  frameRuns += run.runs;
  t.equal(run.runs, N.garbage, `${N.garbage} streams, every real frame yielded before the garbage's typed error`);
});

t.test(
  `${N.headers} frame bodies with well-formed headers of wild fields (payloadBytes included) or raw MessagePack soup`,
  async (t) => {
    const run = newRun();
    fc.assert(
      fc.property(
        fc.oneof(
          {
            weight: 3,
            arbitrary: fc.record({
              header: messageHeader,
              payloadBytes: fc.oneof(fc.constant('right' as const), fc.constant('absent' as const), edgeValue, wild),
              payload,
            }),
          },
          fc.record({ soup, payload }),
        ),
        (input) => {
          run.runs++;
          let body: Buffer;
          if ('soup' in input) body = Buffer.concat([input.soup, input.payload]);
          else {
            const { header, payloadBytes, payload: p } = input;
            const h =
              payloadBytes === 'absent'
                ? header
                : { ...header, payloadBytes: payloadBytes === 'right' ? p.length : payloadBytes };
            body = Buffer.concat([packr.pack(h), p]);
          }
          const t0 = performance.now();
          let direct: Frame | null = null;
          try {
            direct = decodeFrameBody(body);
          } catch (err) {
            run.tally.add(expectTyped(err, FRAME_CODES, 'decodeFrameBody').code);
          }
          run.slowestMs = Math.max(run.slowestMs, performance.now() - t0);
          // The same body through the stream decoder ends the same way, and is that one frame.
          const stream = prefixed(body.length, body);
          const o = feed(stream, {});
          checkAgainstStream(o, stream, {});
          if (direct) {
            run.tally.add('frame');
            run.frames++;
            deepStrictEqual(o.frames, [direct], 'decodeFrameBody and FrameDecoder disagree');
            parseBoth(direct);
          } else if (!o.error) throw new Error('FrameDecoder yielded what decodeFrameBody refused');
          canary();
        },
      ),
      fuzzParams(N.headers, 20_000),
    );
    report(t, 'headers', run);
    frameRuns += run.runs;
    t.equal(run.runs, N.headers, `${N.headers} frame bodies, each a typed error or a valid frame`);
  },
);

t.test(
  `${N.messages} protocol messages with fields in and out of their domains, parsed by both sides against the spec`,
  async (t) => {
    const tally = new Tally();
    let runs = 0;
    const before = parseCalls;
    fc.assert(
      fc.property(messageHeader, payload, (header, p) => {
        runs++;
        const frames = new FrameDecoder().push(frameBytes(header, p));
        if (frames.length !== 1) throw new Error('an encoded message did not decode to one frame');
        parseBoth(frames[0]!, tally);
      }),
      fuzzParams(N.messages, 30_000),
    );
    const calls = parseCalls - before;
    t.comment(`messages: ${runs} frames, ${calls} parser calls; outcomes: ${tally}`);
    t.equal(
      runs,
      N.messages,
      `${N.messages} messages, ${2 * N.messages} parser calls, each a typed error or the message the spec makes of the frame`,
    );
    const accepted = [...tally.counts].filter(([k]) => !k.endsWith('refused')).reduce((n, [, v]) => n + v, 0);
    t.ok(accepted > N.messages / 10, `valid messages were among them (${accepted} accepted)`);
    t.comment(`parseClientMessage + parseServerMessage ran ${parseCalls} times in this file so far`);
  },
);

t.test(`${N.socket} streams through a real FramedSocket over TCP`, async (t) => {
  const CAP = FRAME_CAPS.greeting;
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const run = newRun();
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc
          .tuple(fc.array(validFrame, { maxLength: 4 }), fc.option(garbage, { nil: undefined }))
          .map(([frames, junk]) => Buffer.concat([encode(frames), junk ?? Buffer.alloc(0)])),
        fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.from(a)),
        fc.array(fc.oneof(randomFrame, soupFrame), { minLength: 1, maxLength: 3 }).map((fs) => Buffer.concat(fs)),
      ),
      cuts,
      async (stream, sizes) => {
        run.runs++;
        const t0 = performance.now();
        const want = feed(stream, { maxFrameBytes: CAP });
        const accepted = once(server, 'connection') as Promise<[net.Socket]>;
        const client = net.connect(port, '127.0.0.1');
        client.on('error', () => {});
        client.resume();
        const [sock] = await accepted;
        const got: Frame[] = [];
        let invalid: VmsynthError | null = null;
        let framesAfterInvalid = 0;
        let fsock!: FramedSocket;
        const closed = new Promise<void>((resolve) => {
          fsock = new FramedSocket(sock, CAP, {
            frame: (f) => {
              if (invalid) framesAfterInvalid++;
              got.push(f);
            },
            invalid: (err) => {
              invalid = err;
              fsock.end(200);
            },
            closed: () => resolve(),
          });
        });
        for (const c of split(stream, sizes)) client.write(c);
        client.end();
        let timer: NodeJS.Timeout | undefined;
        const hung = await Promise.race([
          closed.then(() => false),
          new Promise<boolean>((r) => {
            timer = setTimeout(() => r(true), 5000);
          }),
        ]);
        clearTimeout(timer);
        client.destroy();
        if (hung) {
          fsock.destroy();
          throw new Error('the FramedSocket was not closed within 5 s');
        }
        if (fsock.open) throw new Error('the FramedSocket is still open after closed()');
        if (framesAfterInvalid) throw new Error('frames were handed over after invalid()');
        deepStrictEqual(got, want.frames, 'the socket handed over other frames than the decoder yields');
        const inv = invalid as VmsynthError | null;
        if (inv) {
          expectTyped(inv, FRAME_CODES, 'FramedSocket invalid()');
          if (inv.code !== want.error?.code)
            throw new Error(`invalid(${inv.code}) for a stream whose error is ${want.error?.code}`);
        } else if (want.error && want.frames.length === 0)
          throw new Error(`a stream starting with a ${want.error.code} error did not get invalid()`);
        run.frames += got.length;
        run.slowestMs = Math.max(run.slowestMs, performance.now() - t0);
        run.tally.add(inv ? `invalid ${inv.code}` : got.length ? 'frames' : 'nothing');
      },
    ),
    fuzzParams(N.socket, 30_000),
  );
  report(t, 'socket', run);
  t.equal(run.runs, N.socket, `${N.socket} streams over TCP: frames or invalid(), then closed, none hung`);
});

t.test('inputs found by fuzzing stay fixed', async (t) => {
  // A frame fed one byte at a time: the length prefix was re-read by concatenating every buffered
  // chunk, quadratic in the frame's size (a 16 KiB frame took 15 s, a 64 KiB greeting frame minutes).
  const big = frameBytes({ type: 'hello', protocol: 'vmsynth/1', client: 'x'.repeat(1000) }, Buffer.alloc(60_000));
  const dec = new FrameDecoder({ maxFrameBytes: FRAME_CAPS.greeting });
  const t0 = performance.now();
  let n = 0;
  for (let i = 0; i < big.length; i++) n += dec.push(big.subarray(i, i + 1)).length;
  const ms = performance.now() - t0;
  t.ok(n === 1 && ms < 1000, `a ${big.length}-byte frame fed byte by byte decodes in ${ms.toFixed(0)} ms`);
  const empties = new FrameDecoder();
  empties.push(big.subarray(0, 1));
  const t1 = performance.now();
  for (let i = 0; i < 50_000; i++) empties.push(Buffer.alloc(0));
  t.ok(performance.now() - t1 < 1000 && empties.push(big.subarray(1)).length === 1, 'empty chunks cost nothing either');
  // Taking a frame out of 200,000 one-byte chunks: shifting them out one by one was quadratic too.
  const many = frameBytes({ type: 'segment', index: 1 }, Buffer.alloc(200_000));
  const pieces = new FrameDecoder();
  const t2 = performance.now();
  let got = 0;
  for (let i = 0; i < many.length; i++) got += pieces.push(many.subarray(i, i + 1)).length;
  t.ok(
    got === 1 && performance.now() - t2 < 2000,
    `a ${many.length}-byte frame in one-byte chunks decodes in ${(performance.now() - t2).toFixed(0)} ms`,
  );

  // Real frames and garbage in one chunk: the frames were dropped with the error.
  const hello = frameBytes({ type: 'hello', protocol: 'vmsynth/1', client: 'c' });
  const junk = Buffer.concat([hello, hello, prefixed(0, Buffer.alloc(0))]);
  const d = new FrameDecoder();
  const frames = d.push(junk);
  t.equal(frames.length, 2, 'both hellos in front of an empty frame are yielded');
  t.match(d.error, { code: 'VMS_PROTOCOL' }, 'the error is known at once');
  t.throws(() => d.push(hello), { code: 'VMS_PROTOCOL' }, 'and thrown by the next push: the stream stays unusable');
  const over = new FrameDecoder({ maxFrameBytes: 100 });
  t.equal(
    over.push(Buffer.concat([hello, prefixed(101, Buffer.alloc(0))])).length,
    1,
    'a hello in front of an oversized prefix is yielded',
  );
  t.throws(
    () => over.push(Buffer.alloc(0)),
    { code: 'VMS_FRAME_TOO_LARGE' },
    'then the oversized frame is refused, before its bytes come',
  );

  // A header nested 60,000 deep (within the 64 KiB header cap): msgpackr overflows its stack;
  // that is a typed error and leaves msgpackr usable.
  const deep = Buffer.concat([Buffer.alloc(60_000, 0x91), Buffer.from([0xc0])]);
  t.throws(
    () => new FrameDecoder().push(prefixed(deep.length, deep)),
    { code: 'VMS_PROTOCOL' },
    'a header nested 60,000 deep',
  );
  canary();
  t.pass('and the canary frame still decodes the same');

  // A `finished` whose stats are bytes, not a map (docs/protocol.md: stats is a map).
  t.throws(
    () => parseServerMessage(new FrameDecoder().push(frameBytes({ type: 'finished', stats: Buffer.from('x') }))[0]!),
    { code: 'VMS_PROTOCOL' },
    'stats as bin is refused',
  );
});

t.test('total', async (t) => {
  t.comment(`frame decoder: ${frameRuns} fuzz inputs (+ ${N.socket} over TCP); message parsers: ${parseCalls} calls`);
  t.ok(
    frameRuns >= MIN_INPUTS && frameRuns === FRAME_TOTAL,
    `at least ${MIN_INPUTS} inputs to the frame decoder, all that were planned (${FRAME_TOTAL} planned, ${frameRuns} run)`,
  );
  t.ok(
    parseCalls >= MIN_INPUTS,
    `at least ${MIN_INPUTS} inputs to parseClientMessage/parseServerMessage (${parseCalls})`,
  );
});
