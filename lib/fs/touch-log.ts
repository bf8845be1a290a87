/**
 * The first-touch log: which chunks of a launch VM's images the guest read
 * first, across images, in the order the reads arrived.
 *
 * ImageFile records a chunk the first time a FUSE read covers it. Access-order
 * profiling (`overlay profile`) turns the log into a segment order; the
 * synthesis server reads it for its stats. Entries are (image id, chunk
 * index) pairs in a growable typed array: 8 bytes per touched chunk.
 */
export interface Touch {
  image: number;
  index: number;
}

export class TouchLog {
  private pairs = new Uint32Array(2 * 4096);
  private n = 0;

  /** Number of first touches recorded so far. */
  get length(): number {
    return this.n;
  }

  record(image: number, index: number): void {
    if (2 * this.n === this.pairs.length) {
      const grown = new Uint32Array(this.pairs.length * 2);
      grown.set(this.pairs);
      this.pairs = grown;
    }
    this.pairs[2 * this.n] = image;
    this.pairs[2 * this.n + 1] = index;
    this.n++;
  }

  /** Touches [from, to) in the order they happened. */
  slice(from = 0, to = this.n): Touch[] {
    const out: Touch[] = [];
    for (let i = Math.max(0, from); i < Math.min(to, this.n); i++)
      out.push({ image: this.pairs[2 * i]!, index: this.pairs[2 * i + 1]! });
    return out;
  }
}
