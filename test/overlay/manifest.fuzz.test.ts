/**
 * Fuzzing the overlay manifest decoder (ops issue: at least 10,000 inputs,
 * time-boxed; every input ends in a typed error or a valid value: no crash,
 * no hang, no absurd allocation).
 *
 * The decoder under test is Overlay.fromManifest(bytes, { trusted }), which
 * the server runs on the manifest a client sends; the inspect path
 * (trusted: null) and the on-disk path (Overlay.open) are fuzzed too. Inputs
 * are mixed so most get past the first byte: random bytes, a real signed
 * manifest with byte mutations, well-formed envelopes with wild field values
 * and absurd MessagePack length claims, and bodies re-signed with the trusted
 * key (so the body decoder behind the signature check is reached) holding
 * anything from garbage to the real body with fields, chunk tables, image
 * sizes and zstd frames altered.
 *
 * Every accepted manifest is checked against an independent statement of
 * what a valid overlay is, and handed to the consumers of a decoded body
 * (inspectOverlay, deviceState()). Each input's time and allocation are
 * measured: allocation is bounded by what the input can legitimately expand
 * to (a zstd block of at most 128 KiB takes at least 4 bytes).
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import fc from 'fast-check';
import { deepStrictEqual } from 'node:assert';
import { createPublicKey, verify } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { compress } from 'zstd-napi';
import { VmsynthError } from '../../lib/core/errors.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { packr } from '../../lib/core/msgpack.js';
import {
  ChunkKind,
  chunkKey,
  MANIFEST_FILE,
  MAX_SEGMENT_PAYLOAD_BYTES,
  MAX_SEGMENT_RAW_BYTES,
  OVERLAY_FORMAT,
  HASH_BYTES,
  SEGMENTS_FILE,
} from '../../lib/overlay/format.js';
import { encodeBody, unpackBody } from '../../lib/overlay/manifest.js';
import { readRecord, RECORD_BYTES, writeRecord } from '../../lib/overlay/records.js';
import { inspectOverlay, type OverlayReport } from '../../lib/overlay/inspect.js';
import { generateKey, loadSigningKey, signBytes, trustedKeys, type SigningKey } from '../../lib/overlay/keys.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { loadBase } from '../../lib/vm/base.js';
import {
  MIN_INPUTS,
  AllocProbe,
  edgeValue,
  expectTyped,
  fuzzParams,
  mutate,
  mutation,
  scaled,
  seed,
  soup,
  Tally,
  wild,
  type Mutation,
} from '../helpers/fuzz.js';
import { generatePair } from '../helpers/images.js';

t.teardown(removeTestRoot);
t.comment(`fuzz seed ${seed} (FUZZ_SEED=${seed} replays this run)`);

const CHUNK = 4096;
const CODES = new Set(['VMS_OVERLAY_CORRUPT', 'VMS_OVERLAY_FORMAT', 'VMS_BAD_SIGNATURE', 'VMS_UNTRUSTED_KEY']);
/** Slowest a small input may take (generous: GC pauses on a loaded 2-core CI machine). */
const SMALL_INPUT_MS = 500;
/** Most an input of n bytes may make the decoder allocate: what zstd can legitimately expand it to, plus slack. */
const allocBudget = (n: number) => (8 << 20) + 32768 * n;

let good: Buffer;
let goodEnv: Record<string, any>;
let goodRawBody: Buffer;
let key: SigningKey;
let stranger: SigningKey;
let trusted: Map<string, Buffer>;
let goodReport: OverlayReport;
let goodSegmentsBytes: number;
/** Paths to every node of the good body (for "set this field to that"). */
let bodyPaths: (string | number)[][];

const probe = new AllocProbe();
probe.install();
t.teardown(() => probe.uninstall());

t.before(async () => {
  const pair = await generatePair(process.env.VMSYNTH_BASE_DIR!, 'gen', path.join(testRoot, 'custom'), {
    memChunks: 256,
    diskChunks: 32,
    each: 2,
  });
  await generateKey();
  key = await loadSigningKey();
  stranger = await loadSigningKey((await generateKey(path.join(testRoot, 'stranger-keys'))).privateKeyFile);
  trusted = await trustedKeys();
  const out = path.join(testRoot, 'good');
  await buildOverlay({
    base: baseInput(await loadBase('gen')),
    custom: pair.custom,
    appPort: 8000,
    key,
    out,
    segmentBytes: 16 << 10,
  });
  good = await fsp.readFile(path.join(out, MANIFEST_FILE));
  goodSegmentsBytes = (await fsp.stat(path.join(out, SEGMENTS_FILE))).size;
  goodEnv = packr.unpack(good) as Record<string, any>;
  goodRawBody = packr.pack(unpackBody(goodEnv.body));
  const o = Overlay.fromManifest(good, { trusted });
  goodReport = inspectOverlay(o);
  bodyPaths = [];
  const walk = (v: unknown, p: (string | number)[]) => {
    if (p.length) bodyPaths.push(p);
    if (v instanceof Uint8Array || v === null || typeof v !== 'object') return;
    for (const [k, x] of Object.entries(v)) walk(x, [...p, Array.isArray(v) ? Number(k) : k]);
  };
  walk(unpackBody(goodEnv.body), []);
});

const freshBody = () => unpackBody(goodEnv.body) as Record<string, any>;

/** An envelope like the good one around `body`, signed by `by` (the trusted key unless said). */
function signed(body: Uint8Array, by: SigningKey = key): Buffer {
  return packr.pack({
    format: OVERLAY_FORMAT,
    body,
    signature: { alg: 'ed25519', keyId: by.keyId, publicKey: by.publicKeyRaw, sig: signBytes(by, body) },
  });
}

// ---- the oracle: what a decoded overlay must be -------------------------------------------

function checkOverlay(o: Overlay, trust: Map<string, Buffer> | null): void {
  const fail = (why: string): never => {
    throw new Error(`accepted an invalid manifest: ${why}`);
  };
  const count = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0;
  const str = (x: unknown) => typeof x === 'string';
  const bytes = (x: unknown, n?: number) => x instanceof Uint8Array && (n === undefined || x.length === n);
  const b = o.body as unknown as Record<string, any>;
  if (!b || typeof b !== 'object') fail('the body is not a map');
  if (b.format !== OVERLAY_FORMAT) fail('format');
  if (b.chunkSize !== CHUNK) fail('chunkSize');
  if (!str(b.createdAt) || !str(b.tool)) fail('createdAt or tool is not a string');
  if (!b.base || typeof b.base !== 'object' || !str(b.base.name)) fail('base.name');
  const chunks = (['memory', 'disk'] as const).map((name) => {
    const id = b.base[name];
    if (!id || !count(id.bytes) || id.bytes % CHUNK !== 0 || !str(id.sha256) || !/^[0-9a-f]{64}$/.test(id.sha256))
      fail(`base.${name}`);
    return id.bytes / CHUNK;
  });
  if (!b.delta || b.delta.encoding !== 'xor' || !str(b.delta.rule)) fail('delta');
  if (!b.compression || b.compression.codec !== 'zstd' || !Number.isSafeInteger(b.compression.level))
    fail('compression');
  if (!count(b.segmentBytes) || b.segmentBytes === 0) fail('segmentBytes');
  if (
    !b.order ||
    (b.order.kind !== 'default' && b.order.kind !== 'profile') ||
    !count(b.order.runs) ||
    (b.order.rank !== undefined && !str(b.order.rank))
  )
    fail('order');
  if (!b.vm || !count(b.vm.appPort) || b.vm.appPort > 65535) fail('vm.appPort is not a TCP port');
  const ds = b.deviceState;
  if (!ds || !count(ds.bytes) || !str(ds.sha256) || !bytes(ds.zstd)) fail('deviceState');
  const st = b.stats;
  if (
    !st ||
    !Array.isArray(st.chunks) ||
    !st.chunks.every(count) ||
    !count(st.trimmedChunks) ||
    !st.modified ||
    !count(st.modified.memory) ||
    !count(st.modified.disk)
  )
    fail('stats');
  if (!Array.isArray(b.segments)) fail('segments');
  const listed = new Set<number>();
  let offset = 0;
  (b.segments as Record<string, any>[]).forEach((s, si) => {
    const where = `segment ${si}`;
    if (!s || typeof s !== 'object') fail(where);
    if (![s.offset, s.bytes, s.rawBytes, s.count, s.digests].every(count) || !bytes(s.sha256, HASH_BYTES))
      fail(`${where}: fields`);
    if (!bytes(s.chunks, s.count * RECORD_BYTES)) fail(`${where}: table size`);
    if (s.offset !== offset) fail(`${where}: not contiguous`);
    offset += s.bytes;
    const payload = s.rawBytes - s.digests * HASH_BYTES; // the BASE, XOR and RAW chunks' digests follow the payloads
    if (
      payload < 0 ||
      payload % CHUNK !== 0 ||
      payload > MAX_SEGMENT_PAYLOAD_BYTES ||
      s.rawBytes > MAX_SEGMENT_RAW_BYTES
    )
      fail(`${where}: rawBytes`);
    let digests = 0;
    const payloads = new Set<number>();
    for (let i = 0; i < s.count; i++) {
      const r = readRecord(s.chunks, i);
      if (r.image > 1 || r.index >= chunks[r.image]!) fail(`${where} chunk ${i}: outside the images`);
      if (r.kind > ChunkKind.RAW) fail(`${where} chunk ${i}: kind`);
      if (listed.has(chunkKey(r.image, r.index))) fail(`${where} chunk ${i}: listed twice`);
      if (r.kind === ChunkKind.BASE || r.kind === ChunkKind.SELF) {
        if (r.refImage > 1 || r.refIndex >= chunks[r.refImage]!)
          fail(`${where} chunk ${i}: reference outside the images`);
        if (r.kind === ChunkKind.SELF && !listed.has(chunkKey(r.refImage, r.refIndex)))
          fail(`${where} chunk ${i}: self reference forward`);
      }
      if (r.kind === ChunkKind.XOR || r.kind === ChunkKind.RAW) {
        if (r.payloadOffset % CHUNK !== 0 || r.payloadOffset + CHUNK > payload || payloads.has(r.payloadOffset))
          fail(`${where} chunk ${i}: payload offset`);
        payloads.add(r.payloadOffset);
      }
      if (r.kind === ChunkKind.BASE || r.kind === ChunkKind.XOR || r.kind === ChunkKind.RAW) digests++;
      listed.add(chunkKey(r.image, r.index));
    }
    if (digests !== s.digests) fail(`${where}: ${s.digests} digests for ${digests} chunks that have one`);
  });
  if (o.segmentsBytes !== offset) fail('segmentsBytes');
  const sig = o.envelope.signature;
  if (trust) {
    const known = trust.get(sig.keyId);
    if (!known || !known.equals(Buffer.from(sig.publicKey))) fail('signed by a key that is not trusted');
  }
  const pub = createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(sig.publicKey).toString('base64url') },
    format: 'jwk',
  });
  if (!verify(null, o.envelope.body, pub, sig.sig)) fail('the signature does not verify');
}

// ---- running one input ----------------------------------------------------------------

interface Run {
  runs: number;
  slowestMs: number;
  largest: number;
  tally: Tally;
}
const newRun = (): Run => ({ runs: 0, slowestMs: 0, largest: 0, tally: new Tally() });

/** The good manifest still decodes to the same overlay: fuzzing left no state behind. */
function canary(): void {
  deepStrictEqual(inspectOverlay(Overlay.fromManifest(good, { trusted })), goodReport);
}

/** Decodes one input (with `decode`), checks how it ended, its time and allocation; hands back an accepted overlay. */
function judge(
  run: Run,
  bytes: Uint8Array,
  decode: () => Overlay,
  trust: Map<string, Buffer> | null,
  codes = CODES,
): Overlay | null {
  run.runs++;
  const r = probe.measure(decode);
  run.slowestMs = Math.max(run.slowestMs, r.ms);
  run.largest = Math.max(run.largest, r.bytes);
  if (r.bytes > allocBudget(bytes.length))
    throw new Error(`a ${bytes.length}-byte manifest made the decoder allocate ${r.bytes} bytes`);
  if (bytes.length < 1 << 20 && r.ms > SMALL_INPUT_MS)
    throw new Error(`a ${bytes.length}-byte manifest took ${r.ms.toFixed(0)} ms`);
  if (run.runs % 64 === 0) canary();
  if (r.threw) {
    run.tally.add(expectTyped(r.error, codes, 'decoding a manifest').code);
    return null;
  }
  const o = r.value!;
  checkOverlay(o, trust);
  run.tally.add('valid');
  // Consumers of a decoded body must cope with anything the decoder accepts.
  inspectOverlay(o);
  const d = probe.measure(() => o.deviceState());
  if (d.bytes > allocBudget(bytes.length))
    throw new Error(`deviceState() of a ${bytes.length}-byte manifest allocated ${d.bytes} bytes`);
  if (d.threw) expectTyped(d.error, new Set(['VMS_OVERLAY_CORRUPT']), 'deviceState()');
  else if (d.value!.length !== o.body.deviceState.bytes) throw new Error('deviceState() returned the wrong size');
  return o;
}

const fromNetwork = (run: Run, bytes: Uint8Array) =>
  judge(run, bytes, () => Overlay.fromManifest(bytes, { trusted }), trusted);

function report(tt: { comment: (...a: unknown[]) => void }, name: string, run: Run): void {
  tt.comment(
    `${name}: ${run.runs} inputs; slowest ${run.slowestMs.toFixed(1)} ms; largest allocation ${(run.largest / 2 ** 20).toFixed(1)} MiB; outcomes: ${run.tally}`,
  );
}

// ---- generators -------------------------------------------------------------------------

/** A zstd frame header and blocks as they come (declared sizes that lie, RLE blocks, garbage blocks, several frames). */
const zstdSpec = fc.record({
  declared: fc.oneof(
    fc.constantFrom(0, 1, 4096, 128 << 10, 1 << 20, 2 ** 29, 2 ** 29 + 1, 2 ** 31, 2 ** 32 - 1, 2 ** 40, 2 ** 53 - 1),
    fc.nat(),
  ),
  fcs: fc.constantFrom(2, 3),
  blocks: fc.array(
    fc.oneof(
      fc.record({ type: fc.constant(0), data: fc.uint8Array({ maxLength: 48 }) }), // raw
      fc.record({
        type: fc.constant(1),
        size: fc.integer({ min: 0, max: 128 << 10 }),
        data: fc.uint8Array({ minLength: 1, maxLength: 1 }),
      }), // RLE
      fc.record({ type: fc.constant(2), data: fc.uint8Array({ minLength: 1, maxLength: 48 }) }), // "compressed" garbage
    ),
    { maxLength: 4 },
  ),
  frames: fc.integer({ min: 1, max: 3 }),
  tail: fc.uint8Array({ maxLength: 3 }),
});
type ZstdSpec = typeof zstdSpec extends fc.Arbitrary<infer T> ? T : never;

function zstdFrame({ declared, fcs, blocks, frames, tail }: ZstdSpec): Buffer {
  const head = Buffer.alloc(fcs === 2 ? 9 : 13);
  head.writeUInt32LE(0xfd2fb528, 0);
  head[4] = (fcs << 6) | 0x20; // content size field, single segment
  if (fcs === 2) head.writeUInt32LE(declared % 2 ** 32, 5);
  else head.writeBigUInt64LE(BigInt(declared), 5);
  const body = blocks.flatMap((bl, i) => {
    const size = 'size' in bl ? bl.size : bl.data.length;
    const h = (size << 3) | (bl.type << 1) | (i === blocks.length - 1 ? 1 : 0);
    return [h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, ...bl.data];
  });
  const frame = Buffer.concat([head, Buffer.from(body)]);
  return Buffer.concat([...new Array<Buffer>(frames).fill(frame), tail]);
}

type BodyOp =
  | { op: 'set'; path: number; value: unknown }
  | { op: 'delete'; path: number }
  | { op: 'record'; seg: number; rec: number; field: number; value: number }
  | {
      op: 'table';
      seg: number;
      records: {
        image: number;
        kind: number;
        refImage: number;
        index: number;
        refIndex: number;
        payloadOffset: number;
      }[];
      rawChunks: number;
    }
  | { op: 'segments'; how: 'drop' | 'dup' | 'swap' | 'reverse'; a: number; b: number }
  | { op: 'imageSize'; image: 'memory' | 'disk'; chunks: number }
  | { op: 'deviceState'; zstd: ZstdSpec; bytes: number | null };

const small = fc.oneof(fc.integer({ min: 0, max: 300 }), fc.constantFrom(255, 256, 2 ** 31, 2 ** 32 - 1));
const bodyOp: fc.Arbitrary<BodyOp> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({ op: fc.constant('set' as const), path: fc.nat(), value: fc.oneof(edgeValue, wild) }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), path: fc.nat() }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('record' as const),
      seg: fc.nat(3),
      rec: fc.nat(),
      field: fc.nat(5),
      value: fc.oneof(small, fc.nat(), fc.constantFrom(3, 4, 5, 4096, 4095, 16384)),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('table' as const),
      seg: fc.nat(3),
      records: fc.array(
        fc.record({
          image: fc.nat(2),
          kind: fc.nat(5),
          refImage: fc.nat(2),
          index: small,
          refIndex: small,
          payloadOffset: fc.nat(6).map((k) => k * 4096 + (k === 6 ? 1 : 0)),
        }),
        { maxLength: 24 },
      ),
      rawChunks: fc.nat(6),
    }),
  },
  fc.record({
    op: fc.constant('segments' as const),
    how: fc.constantFrom('drop' as const, 'dup' as const, 'swap' as const, 'reverse' as const),
    a: fc.nat(3),
    b: fc.nat(3),
  }),
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('imageSize' as const),
      image: fc.constantFrom('memory' as const, 'disk' as const),
      chunks: fc.constantFrom(
        0,
        1,
        256,
        2 ** 20,
        2 ** 31,
        2 ** 32 - 1,
        2 ** 32,
        2 ** 32 + 1,
        2 ** 33,
        2 ** 36,
        2 ** 40,
        2 ** 41 - 1,
      ),
    }),
  },
  fc.record({
    op: fc.constant('deviceState' as const),
    zstd: zstdSpec,
    bytes: fc.option(fc.oneof(fc.nat(), fc.constantFrom(2 ** 29, 2 ** 31, 2 ** 32 - 1)), { nil: null }),
  }),
);

function applyOps(body: Record<string, any>, ops: readonly BodyOp[]): Record<string, any> {
  const segs = () => (Array.isArray(body.segments) ? body.segments : []) as Record<string, any>[];
  for (const op of ops) {
    switch (op.op) {
      case 'set':
      case 'delete': {
        const p = bodyPaths[op.path % bodyPaths.length]!;
        let parent: any = body;
        for (const k of p.slice(0, -1)) parent = parent && typeof parent === 'object' ? parent[k] : undefined;
        // A path through bytes an earlier op put there goes nowhere: a typed array's indices cannot
        // be deleted (TypeError: a harness failure, not the decoder's, seen once in CI).
        if (!parent || typeof parent !== 'object' || ArrayBuffer.isView(parent)) break;
        if (op.op === 'set') parent[p.at(-1)!] = op.value;
        else if (Array.isArray(parent)) parent.splice(p.at(-1) as number, 1);
        else delete parent[p.at(-1)!];
        break;
      }
      case 'record': {
        const s = segs()[op.seg % Math.max(1, segs().length)];
        if (!s || !(s.chunks instanceof Uint8Array) || s.chunks.length < RECORD_BYTES) break;
        const o = (op.rec % Math.floor(s.chunks.length / RECORD_BYTES)) * RECORD_BYTES;
        const buf = Buffer.from(s.chunks.buffer, s.chunks.byteOffset, s.chunks.byteLength);
        if (op.field < 3) buf[o + op.field] = op.value & 0xff;
        else buf.writeUInt32LE(op.value % 2 ** 32, o + 4 * (op.field - 2));
        break;
      }
      case 'table': {
        const s = segs()[op.seg % Math.max(1, segs().length)];
        if (!s || typeof s !== 'object') break;
        const chunks = Buffer.alloc(op.records.length * RECORD_BYTES);
        op.records.forEach((r, i) => writeRecord(chunks, i, r as Parameters<typeof writeRecord>[2]));
        const digests = op.records.filter(
          (r) => r.kind === ChunkKind.BASE || r.kind === ChunkKind.XOR || r.kind === ChunkKind.RAW,
        ).length;
        Object.assign(s, {
          count: op.records.length,
          chunks,
          digests,
          rawBytes: op.rawChunks * CHUNK + digests * HASH_BYTES,
        });
        break;
      }
      case 'segments': {
        const list = segs();
        if (list.length === 0) break;
        const a = op.a % list.length;
        const b = op.b % list.length;
        if (op.how === 'drop') list.splice(a, 1);
        else if (op.how === 'dup') list.splice(a, 0, structuredClone(list[a]!));
        else if (op.how === 'swap') [list[a], list[b]] = [list[b]!, list[a]!];
        else list.reverse();
        break;
      }
      case 'imageSize':
        if (body.base?.[op.image] && typeof body.base[op.image] === 'object')
          body.base[op.image].bytes = op.chunks * CHUNK;
        break;
      case 'deviceState':
        if (body.deviceState && typeof body.deviceState === 'object') {
          body.deviceState.zstd = zstdFrame(op.zstd);
          if (op.bytes !== null) body.deviceState.bytes = op.bytes;
        }
        break;
    }
  }
  return body;
}

/** Body bytes to re-sign (as a recipe, so a counterexample reads as what was done): garbage, compressed garbage, wild values, the real body altered, crafted zstd frames. */
type BodyRecipe =
  | { garbage: Uint8Array }
  | { zstdOfGarbage: Uint8Array }
  | { wild: unknown }
  | { zstdOfSoup: Buffer }
  | { ops: BodyOp[] }
  | { rawBodyMutations: Mutation[] }
  | { zstdMutations: Mutation[] }
  | { zstd: ZstdSpec };
const bodyRecipe: fc.Arbitrary<BodyRecipe> = fc.oneof(
  fc.record({ garbage: fc.uint8Array({ maxLength: 600 }) }),
  fc.record({ zstdOfGarbage: fc.uint8Array({ maxLength: 600 }) }),
  fc.record({ wild }),
  fc.record({ zstdOfSoup: soup }),
  { weight: 8, arbitrary: fc.record({ ops: fc.array(bodyOp, { minLength: 1, maxLength: 5 }) }) },
  { weight: 2, arbitrary: fc.record({ rawBodyMutations: fc.array(mutation, { minLength: 1, maxLength: 4 }) }) },
  fc.record({ zstdMutations: fc.array(mutation, { minLength: 1, maxLength: 3 }) }),
  fc.record({ zstd: zstdSpec }),
);

function bodyBytes(r: BodyRecipe): Buffer {
  if ('garbage' in r) return Buffer.from(r.garbage);
  if ('zstdOfGarbage' in r) return compress(Buffer.from(r.zstdOfGarbage));
  if ('wild' in r) return encodeBody(r.wild);
  if ('zstdOfSoup' in r) return compress(r.zstdOfSoup);
  if ('ops' in r) return encodeBody(applyOps(freshBody(), r.ops));
  if ('rawBodyMutations' in r) return compress(mutate(goodRawBody, r.rawBodyMutations));
  if ('zstdMutations' in r) return mutate(goodEnv.body, r.zstdMutations);
  return zstdFrame(r.zstd);
}

const sigField = (name: 'alg' | 'keyId' | 'publicKey' | 'sig', bad: fc.Arbitrary<unknown>) =>
  fc.oneof({ weight: 3, arbitrary: fc.constant(name) }, bad);
/** Envelopes that are valid MessagePack maps with fields of any kind. */
const envelope: fc.Arbitrary<Buffer> = fc
  .record(
    {
      format: fc.oneof(
        { weight: 4, arbitrary: fc.constant(OVERLAY_FORMAT) },
        fc.constantFrom('vmsynth-overlay/1', 'vmsynth-overlay/3', 'vmsynth-overlay/2 '),
        wild,
      ),
      body: fc.oneof({ weight: 3, arbitrary: fc.constant('good' as const) }, fc.uint8Array({ maxLength: 200 }), wild),
      signature: fc.oneof(
        {
          weight: 3,
          arbitrary: fc.record(
            {
              alg: sigField('alg', fc.oneof(fc.constant('ed25519 '), wild)),
              keyId: sigField(
                'keyId',
                fc.oneof(
                  fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: 16, maxLength: 16 }),
                  wild,
                ),
              ),
              publicKey: sigField(
                'publicKey',
                fc.oneof(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 40 }), wild),
              ),
              sig: sigField('sig', fc.oneof(fc.uint8Array({ minLength: 64, maxLength: 64 }), wild)),
            },
            { requiredKeys: [] },
          ),
        },
        wild,
      ),
      extra: fc.dictionary(fc.string({ maxLength: 8 }), wild, { maxKeys: 3 }),
    },
    { requiredKeys: ['extra'] },
  )
  .map(({ extra, ...e }) => {
    const env: Record<string, unknown> = { ...extra };
    if ('format' in e) env.format = e.format;
    if ('body' in e) env.body = e.body === 'good' ? goodEnv.body : e.body;
    if ('signature' in e) {
      const s = e.signature;
      if (s && typeof s === 'object' && !Array.isArray(s) && !(s instanceof Uint8Array)) {
        const pick = (k: string, v: unknown) => (v === k ? goodEnv.signature[k] : v);
        env.signature = Object.fromEntries(Object.entries(s).map(([k, v]) => [k, pick(k, v)]));
      } else env.signature = s;
    }
    return packr.pack(env);
  });

const str = (s: string) => Buffer.concat([Buffer.from([0xa0 | s.length]), Buffer.from(s)]);
/** Envelope maps whose values are raw MessagePack soup (absurd lengths, extension types, deep nesting). */
const soupEnvelope: fc.Arbitrary<Buffer> = fc
  .tuple(fc.boolean(), soup, soup, soup)
  .map(([realFormat, a, b, c]) =>
    Buffer.concat([
      Buffer.from([0x83]),
      str('format'),
      realFormat ? str(OVERLAY_FORMAT.slice(0, 31)) : a,
      str('body'),
      b,
      str('signature'),
      c,
    ]),
  );

// ---- the properties -----------------------------------------------------------------------

const N = scaled({ random: 2000, mutated: 2500, envelopes: 2000, resigned: 3500, inspect: 600, disk: 300, large: 16 });
const NETWORK_TOTAL = N.random + N.mutated + N.envelopes + N.resigned;
let networkRuns = 0;

t.test(`${N.random} random byte strings (some starting like a real manifest)`, async (t) => {
  const run = newRun();
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 3000 }),
        fc
          .tuple(fc.nat(), fc.uint8Array({ maxLength: 200 }))
          .map(([n, tail]) => Buffer.concat([good.subarray(0, n % good.length), tail])),
      ),
      (bytes) => {
        fromNetwork(run, bytes);
      },
    ),
    fuzzParams(N.random, 20_000),
  );
  report(t, 'random', run);
  networkRuns += run.runs;
  t.equal(run.runs, N.random, `${N.random} inputs, each a typed error or a valid overlay`);
});

t.test(`${N.mutated} signed manifests with byte flips, truncations, insertions and length claims`, async (t) => {
  const run = newRun();
  fc.assert(
    fc.property(fc.array(mutation, { minLength: 1, maxLength: 6 }), (muts) => {
      fromNetwork(run, mutate(good, muts));
    }),
    fuzzParams(N.mutated, 20_000),
  );
  report(t, 'mutated', run);
  networkRuns += run.runs;
  t.equal(run.runs, N.mutated, `${N.mutated} inputs, each a typed error or a valid overlay`);
});

t.test(
  `${N.envelopes} well-formed MessagePack envelopes with wild fields, absurd length claims and deep nesting`,
  async (t) => {
    const run = newRun();
    fc.assert(
      fc.property(fc.oneof({ weight: 3, arbitrary: envelope }, soupEnvelope, soup), (bytes) => {
        fromNetwork(run, bytes);
      }),
      fuzzParams(N.envelopes, 20_000),
    );
    report(t, 'envelopes', run);
    networkRuns += run.runs;
    t.equal(run.runs, N.envelopes, `${N.envelopes} inputs, each a typed error or a valid overlay`);
  },
);

t.test(`${N.resigned} bodies re-signed with the trusted key (the body decoder behind the signature)`, async (t) => {
  const run = newRun();
  fc.assert(
    fc.property(bodyRecipe, (r) => {
      fromNetwork(run, signed(bodyBytes(r)));
    }),
    fuzzParams(N.resigned, 30_000),
  );
  report(t, 'resigned', run);
  networkRuns += run.runs;
  t.equal(run.runs, N.resigned, `${N.resigned} inputs, each a typed error or a valid overlay`);
  t.equal(
    run.tally.get('VMS_BAD_SIGNATURE') + run.tally.get('VMS_UNTRUSTED_KEY'),
    0,
    'every input got past the signature check',
  );
  t.ok(
    run.tally.get('valid') > 0 && run.tally.get('VMS_OVERLAY_CORRUPT') > N.resigned / 4,
    'and both accepted and refused bodies were among them',
  );
});

t.test(`${N.inspect} manifests through the inspect path (trusted: null, any self-consistent key)`, async (t) => {
  const run = newRun();
  fc.assert(
    fc.property(bodyRecipe, fc.boolean(), (r, own) => {
      const bytes = signed(bodyBytes(r), own ? key : stranger);
      judge(run, bytes, () => Overlay.fromManifest(bytes, { trusted: null }), null);
    }),
    fuzzParams(N.inspect, 10_000),
  );
  report(t, 'inspect', run);
  t.equal(run.runs, N.inspect, `${N.inspect} inputs, each a typed error or a valid overlay`);
  t.equal(
    run.tally.get('VMS_BAD_SIGNATURE') + run.tally.get('VMS_UNTRUSTED_KEY'),
    0,
    'self-signed manifests all reach the body decoder',
  );
});

t.test(`${N.disk} manifests through the on-disk path (Overlay.open)`, async (t) => {
  const run = newRun();
  const dir = path.join(testRoot, 'fuzz-open');
  mkdirSync(dir);
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.record({ manifestMutations: fc.array(mutation, { minLength: 1, maxLength: 4 }) }),
        fc.record({ body: bodyRecipe }),
      ),
      fc.oneof(fc.constant(-1), fc.nat(2 * 24_000)),
      async (recipe, segSize) => {
        const bytes = 'body' in recipe ? signed(bodyBytes(recipe.body)) : mutate(good, recipe.manifestMutations);
        writeFileSync(path.join(dir, MANIFEST_FILE), bytes);
        writeFileSync(path.join(dir, SEGMENTS_FILE), Buffer.alloc(segSize < 0 ? goodSegmentsBytes : segSize));
        run.runs++;
        const t0 = performance.now();
        let o: Overlay | null = null;
        try {
          o = await Overlay.open(dir, { trusted });
        } catch (err) {
          run.tally.add(expectTyped(err, CODES, 'Overlay.open').code);
        }
        run.slowestMs = Math.max(run.slowestMs, performance.now() - t0);
        if (o) {
          checkOverlay(o, trusted);
          if (o.segmentsBytes !== (segSize < 0 ? goodSegmentsBytes : segSize))
            throw new Error('opened an overlay whose segments file has the wrong size');
          run.tally.add('valid');
        }
      },
    ),
    fuzzParams(N.disk, 15_000),
  );
  report(t, 'open', run);
  t.equal(run.runs, N.disk, `${N.disk} inputs, each a typed error or a valid overlay`);
});

t.test(`${N.large} large manifests (1-8 MiB) decode or fail in time linear in their size`, async (t) => {
  const run = newRun();
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 8 }),
      fc.constantFrom('trailing', 'truncated', 'resigned', 'garbage-body'),
      fc.uint8Array({ minLength: 1, maxLength: 8 }),
      (mib, how, extra) => {
        const big = Buffer.alloc(mib << 20, 7);
        let bytes: Buffer;
        if (how === 'trailing') bytes = Buffer.concat([packr.pack({ ...goodEnv, body: big }), extra]);
        else if (how === 'truncated')
          bytes = packr.pack({ ...goodEnv, body: big }).subarray(0, (mib << 20) - extra.length);
        else if (how === 'resigned') bytes = Buffer.concat([signed(big), extra]);
        else bytes = signed(compress(big));
        run.runs++;
        const r = probe.measure(() => Overlay.fromManifest(bytes, { trusted }));
        run.slowestMs = Math.max(run.slowestMs, r.ms);
        run.largest = Math.max(run.largest, r.bytes);
        if (r.ms > 150 + bytes.length * 60e-6)
          throw new Error(`a ${bytes.length}-byte manifest (${how}) took ${r.ms.toFixed(0)} ms`);
        if (r.threw) run.tally.add(expectTyped(r.error, CODES, 'decoding a large manifest').code);
        else throw new Error('a large garbage manifest was accepted');
      },
    ),
    fuzzParams(N.large, 20_000),
  );
  report(t, 'large', run);
  t.equal(run.runs, N.large, `${N.large} large inputs, each a typed error in time`);
});

t.test('inputs found by fuzzing stay fixed', async (t) => {
  const refuse = (name: string, bytes: Buffer, code: string, maxMs = SMALL_INPUT_MS) => {
    const r = probe.measure(() => Overlay.fromManifest(bytes, { trusted }));
    t.ok(r.threw && r.error instanceof VmsynthError && r.error.code === code, `${name}: ${code}`, {
      got: r.error instanceof Error ? r.error.message : r.value,
    });
    t.ok(r.bytes <= allocBudget(bytes.length), `${name}: allocates ${r.bytes} bytes at most`);
    t.ok(r.ms < maxMs, `${name}: ${r.ms.toFixed(1)} ms`);
  };
  const body = (edit: (b: Record<string, any>) => void) => {
    const b = freshBody();
    edit(b);
    return signed(encodeBody(b));
  };
  // A memory image of 2^52 bytes: the chunk bitmap's length was an invalid typed array length (RangeError).
  refuse(
    'memory image of 2^52 bytes',
    body((b) => {
      b.base.memory.bytes = 2 ** 52;
    }),
    'VMS_OVERLAY_CORRUPT',
  );
  // A 16 TiB disk image claimed by a 2 KB manifest allocated a 512 MiB bitmap for its handful of chunks.
  const huge = probe.measure(() =>
    Overlay.fromManifest(
      body((b) => {
        b.base.disk.bytes = 2 ** 44;
      }),
      { trusted },
    ),
  );
  t.ok(huge.bytes < 8 << 20, `a 2^32-chunk disk image allocates ${huge.bytes} bytes, not a 512 MiB bitmap`);
  // A zstd frame declaring 512 MiB in a few bytes was allocated in full before decompression failed.
  const liar = Buffer.from('28b52ffda00000002009000001', 'hex'); // content size 2^29, one raw block of 1 byte
  refuse('a 13-byte zstd body declaring 512 MiB', signed(liar), 'VMS_OVERLAY_CORRUPT');
  refuse(
    'a zstd body of two frames',
    signed(Buffer.concat([encodeBody(freshBody()), encodeBody(freshBody())])),
    'VMS_OVERLAY_CORRUPT',
  );
  // A valid envelope followed by one byte: msgpackr's error message serialized the whole envelope to JSON (seconds and GiB for a large body).
  refuse(
    'an 8 MiB envelope with a trailing byte',
    Buffer.concat([packr.pack({ ...goodEnv, body: Buffer.alloc(8 << 20) }), Buffer.from([0])]),
    'VMS_OVERLAY_CORRUPT',
    500,
  );
  refuse(
    'a body with a trailing byte',
    signed(compress(Buffer.concat([goodRawBody, Buffer.from([0])]))),
    'VMS_OVERLAY_CORRUPT',
  );
  // Fields the decoder let through untyped, which `overlay inspect` then dereferenced (TypeError).
  refuse(
    'no stats.modified',
    body((b) => {
      delete b.stats.modified;
    }),
    'VMS_OVERLAY_CORRUPT',
  );
  refuse(
    'no delta',
    body((b) => {
      delete b.delta;
    }),
    'VMS_OVERLAY_CORRUPT',
  );
  refuse(
    'compression is null',
    body((b) => {
      b.compression = null;
    }),
    'VMS_OVERLAY_CORRUPT',
  );
  refuse(
    'createdAt is a map',
    body((b) => {
      b.createdAt = {};
    }),
    'VMS_OVERLAY_CORRUPT',
  );
  refuse(
    'appPort 2^40',
    body((b) => {
      b.vm.appPort = 2 ** 40;
    }),
    'VMS_OVERLAY_CORRUPT',
  );
  // A device state whose zstd frame declares 2 GiB (deviceState() allocated it before failing).
  const ds = Overlay.fromManifest(
    body((b) => {
      b.deviceState.zstd = Buffer.from('28b52ffda00000008009000001', 'hex');
      b.deviceState.bytes = 2 ** 31;
    }),
    { trusted },
  );
  const d = probe.measure(() => ds.deviceState());
  t.ok(
    d.threw && (d.error as VmsynthError).code === 'VMS_OVERLAY_CORRUPT' && d.bytes < 8 << 20,
    `a device state declaring 2 GiB is refused without allocating it (${d.bytes} bytes)`,
  );
  canary();
  t.pass('the good manifest still decodes the same');
});

t.test('total', async (t) => {
  t.comment(
    `Overlay.fromManifest (server path) ran on ${networkRuns} fuzz inputs; plus ${N.inspect} (inspect path), ${N.disk} (Overlay.open), ${N.large} large`,
  );
  t.ok(
    networkRuns >= MIN_INPUTS && networkRuns === NETWORK_TOTAL,
    `at least ${MIN_INPUTS} inputs to the server's manifest decoder, all that were planned (${NETWORK_TOTAL} planned, ${networkRuns} run)`,
  );
});
