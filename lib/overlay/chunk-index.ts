/**
 * A compact content index: chunk SHA-256 → where the chunk lives
 * (image, index). Open addressing over typed arrays keyed by the first 8
 * bytes of the digest, 12 bytes per slot, so indexing a 5 GiB base (1.3 M
 * chunks) costs ~32 MB, not the ~200 MB a Map of hex strings would. A hit is
 * a candidate only: callers compare the bytes before they trust it.
 */

export interface Location {
  image: number;
  index: number;
}

const EMPTY = 0xffffffff;

export class ChunkIndex {
  private hi: Uint32Array;
  private lo: Uint32Array;
  private val: Uint32Array;
  private mask: number;
  private used = 0;

  constructor(expected = 1024) {
    let cap = 1024;
    while (cap < expected * 2) cap *= 2;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.val = new Uint32Array(cap).fill(EMPTY);
    this.mask = cap - 1;
  }

  get size(): number {
    return this.used;
  }

  /** Adds the digest's location unless the digest is already present (the first location wins). */
  add(digest: Uint8Array, loc: Location): void {
    if ((this.used + 1) * 2 > this.val.length) this.grow();
    const h = readU32(digest, 0);
    const l = readU32(digest, 4);
    for (let s = l & this.mask; ; s = (s + 1) & this.mask) {
      if (this.val[s] === EMPTY) {
        this.hi[s] = h;
        this.lo[s] = l;
        this.val[s] = pack(loc);
        this.used++;
        return;
      }
      if (this.hi[s] === h && this.lo[s] === l) return;
    }
  }

  get(digest: Uint8Array): Location | undefined {
    const h = readU32(digest, 0);
    const l = readU32(digest, 4);
    for (let s = l & this.mask; ; s = (s + 1) & this.mask) {
      const v = this.val[s]!;
      if (v === EMPTY) return undefined;
      if (this.hi[s] === h && this.lo[s] === l) return { image: v >>> 31, index: v & 0x7fffffff };
    }
  }

  private grow(): void {
    const { hi, lo, val } = this;
    const cap = val.length * 2;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.val = new Uint32Array(cap).fill(EMPTY);
    this.mask = cap - 1;
    for (let i = 0; i < val.length; i++) {
      if (val[i] === EMPTY) continue;
      for (let s = lo[i]! & this.mask; ; s = (s + 1) & this.mask) {
        if (this.val[s] === EMPTY) {
          this.hi[s] = hi[i]!;
          this.lo[s] = lo[i]!;
          this.val[s] = val[i]!;
          break;
        }
      }
    }
  }
}

function readU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function pack(loc: Location): number {
  if (loc.index >= 0x7fffffff || loc.image > 1)
    throw new RangeError(`location ${loc.image}/${loc.index} does not fit the index`);
  return ((loc.image << 31) | loc.index) >>> 0;
}
