/**
 * Shared pieces of the fuzz tests (test/**\/*.fuzz.test.ts): input
 * generators (wild MessagePack values, raw MessagePack "soup" with absurd
 * length claims, byte mutations, stream splits), the rule that every input
 * ends in a typed error or a valid value, a per-input time and allocation
 * probe, and time-boxed fast-check settings.
 *
 * FUZZ_SEED=<n> replays a run; the seed in use is printed by each test file.
 * FUZZ_SCALE=<k> runs k times as many inputs (with k times the time boxes),
 * for a longer session than CI's; a k below 1 runs fewer (with the time
 * boxes unchanged), as `npm run test:unit` does for a quick loop.
 */
import fc from 'fast-check';
import { VmsynthError } from '../../lib/core/errors.js';

export const seed = Number(process.env.FUZZ_SEED) || (Date.now() ^ (Math.random() * 2 ** 31)) >>> 0;

export const scale = Math.max(0.01, Number(process.env.FUZZ_SCALE) || 1);

/** The inputs each decoder must get in a full run (the ops issue's bar), times FUZZ_SCALE. */
export const MIN_INPUTS = Math.round(10_000 * scale);

/** Input counts times FUZZ_SCALE (at least one each). */
export function scaled<K extends string>(counts: Record<K, number>): Record<K, number> {
  return Object.fromEntries(
    Object.entries<number>(counts).map(([k, n]) => [k, Math.max(1, Math.round(n * scale))]),
  ) as Record<K, number>;
}

/** fast-check settings: exactly `numRuns` inputs, failing (not silently stopping) when `ms` (times FUZZ_SCALE) pass first. */
export function fuzzParams(numRuns: number, ms: number): fc.Parameters<unknown> {
  return { numRuns, seed, plugins: [fc.interruptAfterTimeLimit(ms * Math.max(1, scale), { failOnInterrupt: true })] };
}

/** Numbers and strings that sit on the edges decoders check. */
export const edgeValue = fc.constantFrom<unknown>(
  0,
  -0,
  1,
  -1,
  1.5,
  NaN,
  Infinity,
  -Infinity,
  255,
  256,
  4095,
  4096,
  4097,
  65535,
  65536,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32 - 1,
  2 ** 32,
  2 ** 44,
  2 ** 52,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 53 + 2,
  4096 * 2 ** 32,
  Number.MAX_VALUE,
  -(2 ** 53),
  '',
  'x',
  '/',
  'vmsynth-overlay/1',
  'vmsynth-overlay/2',
  'vmsynth/1',
  'ed25519',
  '\u0000',
  'é'.repeat(3000),
  true,
  false,
  null,
);

const leaf: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: edgeValue },
  fc.integer(),
  fc.double(),
  fc.string({ maxLength: 24 }),
  fc.uint8Array({ maxLength: 80 }).map((a) => Buffer.from(a)),
  // Every 64-bit integer MessagePack can carry (a wider one is not encodable at all).
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
);

/** Any plain MessagePack value: leaves, arrays, maps, nested a few levels. */
export const wild: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: 4 },
    leaf,
    fc.array(tie('value'), { maxLength: 5 }),
    fc.dictionary(fc.string({ maxLength: 10 }), tie('value'), { maxKeys: 5 }),
  ),
})).value;

const be = (n: number, bytes: number): number[] => {
  const out: number[] = [];
  for (let i = bytes - 1; i >= 0; i--) out.push(Math.floor(n / 2 ** (8 * i)) & 0xff);
  return out;
};
const claim = fc.constantFrom(0, 1, 2, 15, 16, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1);

/**
 * Raw MessagePack tokens, valid or not, chained with no regard for what
 * they claim: container and byte-string headers with absurd lengths (2^32 - 1
 * elements, 4 GiB strings), extension types, the unused byte 0xc1, deep
 * nesting, and scraps of real values. A decoder must refuse these without
 * allocating for the claim.
 */
export const soup: fc.Arbitrary<Buffer> = fc
  .array(
    fc.oneof(
      { weight: 10, arbitrary: claim.map((n) => [0xdd, ...be(n, 4)]) }, // array32
      { weight: 10, arbitrary: claim.map((n) => [0xdf, ...be(n, 4)]) }, // map32
      { weight: 10, arbitrary: claim.map((n) => [0xdc, ...be(n & 0xffff, 2)]) }, // array16
      { weight: 10, arbitrary: claim.map((n) => [0xde, ...be(n & 0xffff, 2)]) }, // map16
      { weight: 10, arbitrary: claim.map((n) => [0xc6, ...be(n, 4)]) }, // bin32
      { weight: 10, arbitrary: claim.map((n) => [0xdb, ...be(n, 4)]) }, // str32
      { weight: 10, arbitrary: claim.map((n) => [0xc9, ...be(n, 4), 0x05]) }, // ext32
      { weight: 10, arbitrary: fc.integer({ min: -128, max: 127 }).map((type) => [0xd4, type & 0xff, 0x00]) }, // fixext1 of any type
      {
        weight: 10,
        arbitrary: fc.constantFrom(
          [0xc1],
          [0xc0],
          [0xc2],
          [0xc3],
          [0x80],
          [0x90],
          [0xa0],
          [0x7f],
          [0xe0],
          [0xd6, 0xff, 0, 0, 0, 1],
          [0xd4, 0x72, 0x40],
          [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
      },
      { weight: 10, arbitrary: fc.integer({ min: 1, max: 3000 }).map((depth) => new Array<number>(depth).fill(0x91)) }, // nesting
      {
        weight: 1,
        arbitrary: fc.integer({ min: 8000, max: 20_000 }).map((depth) => new Array<number>(depth).fill(0x91)),
      }, // deep enough to overflow the decoder's stack
      {
        weight: 10,
        arbitrary: fc
          .integer({ min: 1, max: 200 })
          .map((depth) => new Array<number>(depth).fill(0x81).flatMap((m) => [m, 0xa1, 0x6b])),
      }, // nested maps {k: {k: ...}}
      { weight: 10, arbitrary: fc.uint8Array({ maxLength: 12 }).map((a) => [...a]) },
    ),
    { minLength: 1, maxLength: 12 },
  )
  .map((tokens) => Buffer.from(tokens.flat()));

export type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; byte: number }
  | { op: 'u32'; at: number; value: number }
  | { op: 'truncate'; at: number }
  | { op: 'insert'; at: number; bytes: Uint8Array }
  | { op: 'delete'; at: number; len: number }
  | { op: 'repeat'; at: number; len: number };

const at = fc.nat({ max: 1 << 20 });
export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('flip' as const), at, bit: fc.integer({ min: 0, max: 7 }) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('set' as const),
      at,
      byte: fc.constantFrom(0x00, 0xff, 0xc1, 0xdd, 0xdf, 0xc6, 0xdb, 0x7f, 0x80, 0x91),
    }),
  },
  fc.record({ op: fc.constant('u32' as const), at, value: claim }),
  fc.record({ op: fc.constant('truncate' as const), at }),
  fc.record({ op: fc.constant('insert' as const), at, bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ op: fc.constant('delete' as const), at, len: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ op: fc.constant('repeat' as const), at, len: fc.integer({ min: 1, max: 64 }) }),
);

/** Applies mutations in order (positions are taken modulo the current length). */
export function mutate(input: Uint8Array, muts: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of muts) {
    const pos = b.length === 0 ? 0 : m.at % b.length;
    switch (m.op) {
      case 'flip':
        if (b.length) b[pos] = b[pos]! ^ (1 << m.bit);
        break;
      case 'set':
        if (b.length) b[pos] = m.byte;
        break;
      case 'u32':
        if (b.length >= 4) b.writeUInt32BE(m.value >>> 0, Math.min(pos, b.length - 4));
        break;
      case 'truncate':
        b = b.subarray(0, pos);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, pos), m.bytes, b.subarray(pos)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, pos), b.subarray(pos + m.len)]);
        break;
      case 'repeat':
        b = Buffer.concat([b.subarray(0, pos + m.len), b.subarray(pos)]);
        break;
    }
  }
  return Buffer.from(b);
}

/** Chunk sizes to cut a stream with (used cyclically): single bytes, small pieces, large pieces. */
export const cuts: fc.Arbitrary<number[]> = fc.array(
  fc.oneof(
    fc.constant(1),
    fc.integer({ min: 1, max: 5 }),
    fc.integer({ min: 1, max: 300 }),
    fc.integer({ min: 1, max: 1 << 16 }),
  ),
  { minLength: 1, maxLength: 30 },
);

export function split(stream: Buffer, sizes: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  for (let pos = 0, i = 0; pos < stream.length; i++) {
    const n = sizes[i % sizes.length]!;
    out.push(stream.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

/** Anything thrown that is not a VmsynthError with one of `codes` fails the run, with what it was. */
export function expectTyped(err: unknown, codes: ReadonlySet<string>, what: string): VmsynthError {
  if (err instanceof VmsynthError && codes.has(err.code)) return err;
  const desc =
    err instanceof VmsynthError
      ? `VmsynthError ${err.code}`
      : err instanceof Error
        ? `${err.constructor.name}`
        : typeof err;
  throw new Error(
    `${what}: expected a VmsynthError with a code in {${[...codes].join(', ')}}, got ${desc}: ${err instanceof Error ? err.message.slice(0, 300) : String(err)}`,
    { cause: err },
  );
}

/** Counts outcomes by label, for the coverage summary each test prints. */
export class Tally {
  readonly counts = new Map<string, number>();
  add(label: string): void {
    this.counts.set(label, (this.counts.get(label) ?? 0) + 1);
  }
  get(label: string): number {
    return this.counts.get(label) ?? 0;
  }
  get total(): number {
    let n = 0;
    for (const v of this.counts.values()) n += v;
    return n;
  }
  toString(): string {
    return [...this.counts]
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
  }
}

/**
 * Largest buffer requested and growth of ArrayBuffer memory while `fn`
 * runs: Buffer.alloc* are wrapped while the probe is installed (zstd-napi and
 * msgpackr allocate through them), and typed arrays show up in
 * process.memoryUsage().arrayBuffers (measured before any collection can
 * free them).
 */
export class AllocProbe {
  private largest = 0;
  private readonly saved = {
    alloc: Buffer.alloc,
    allocUnsafe: Buffer.allocUnsafe,
    allocUnsafeSlow: Buffer.allocUnsafeSlow,
  };

  install(): void {
    const note = (n: unknown) => {
      if (typeof n === 'number' && n > this.largest) this.largest = n;
    };
    const { alloc, allocUnsafe, allocUnsafeSlow } = this.saved;
    Buffer.alloc = ((size: number, ...rest: unknown[]) => {
      note(size);
      return (alloc as (...a: unknown[]) => Buffer).call(Buffer, size, ...rest);
    }) as typeof Buffer.alloc;
    Buffer.allocUnsafe = (size: number) => {
      note(size);
      return allocUnsafe.call(Buffer, size);
    };
    Buffer.allocUnsafeSlow = (size: number) => {
      note(size);
      return allocUnsafeSlow.call(Buffer, size);
    };
  }

  uninstall(): void {
    Object.assign(Buffer, this.saved);
  }

  /** Runs `fn`, catching what it throws; returns that, its result, the bytes it asked for at most (largest single buffer, or ArrayBuffer growth) and its time. */
  measure<T>(fn: () => T): { bytes: number; ms: number; value?: T; error?: unknown; threw: boolean } {
    this.largest = 0;
    const before = process.memoryUsage().arrayBuffers;
    const t0 = performance.now();
    let value: T | undefined;
    let error: unknown;
    let threw = false;
    try {
      value = fn();
    } catch (err) {
      error = err;
      threw = true;
    }
    const ms = performance.now() - t0;
    const grown = process.memoryUsage().arrayBuffers - before;
    return { bytes: Math.max(this.largest, grown), ms, threw, ...(threw ? { error } : { value: value }) };
  }
}
