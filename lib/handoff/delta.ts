/**
 * The handoff delta: what a running VM changed since its synthesis, as
 * segments in the overlay format (overlay/format.ts), numbered after the
 * overlay's own. The target holds the base and gets the overlay on its own;
 * applying these segments over its launch images (base + overlay) gives the
 * images the VM has now, through the one segment apply (apply-segment.ts).
 *
 * A pass takes the chunks that may differ from the launch image (the pages
 * the guest wrote, the disk clusters its qcow2 layer holds, and what an
 * earlier handoff brought: handoff/vm-changes.ts finds them) and sends a
 * chunk only when its content differs from what the target holds: the
 * launch image's, or what an earlier pass sent. A chunk sent earlier that is
 * no longer among the changed ones (its page was given back) is sent again
 * with the launch content. Each chunk is a ZERO, a BASE reference (equal to
 * the base at its offset), a SELF reference (equal to a payload earlier in
 * this pass), or a payload XOR the base or RAW, as the builder packs
 * (overlay/pack.ts). Pure of any VM: the readers are passed in.
 */
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { isZero, sha256, xorInto, zeroWords } from '../overlay/chunk-io.js';
import { chunkKey, chunkOfKey, ChunkKind, type Image, type SegmentInfo } from '../overlay/format.js';
import { SegmentPacker } from '../overlay/pack.js';
import { yieldNow } from '../core/scope.js';

/** One chunk of an image as the VM has it now. */
export interface ChunkNow {
  image: Image;
  index: number;
  /** CHUNK_SIZE bytes (may be a view into a larger buffer: not kept past the pass). */
  data: Buffer;
}

/** Where a pass reads what the target would hold without it. */
export interface DeltaReaders {
  /** The launch image's chunk (base + overlay, and what an earlier handoff brought), into `out`. */
  launch(image: Image, index: number, out: Buffer): Promise<void>;
  /** The base's chunk at the same offset, into `out`. */
  base(image: Image, index: number, out: Buffer): Promise<void>;
}

/** One delta segment: its entry (as a manifest would list it) and its compressed bytes. */
export interface DeltaSegment {
  index: number;
  info: SegmentInfo;
  data: Buffer;
}

export interface DeltaPass {
  segments: DeltaSegment[];
  /** Chunks sent, by kind (ChunkKind order: zero, base, self, xor, raw). */
  kinds: number[];
  /** Chunks looked at (changed since synthesis) and skipped (the target holds them already). */
  looked: number;
  skipped: number;
  /** Compressed bytes of the segments. */
  bytes: number;
}

export interface PassOptions {
  /** Payload bytes per segment (default 1 MiB, as overlays). */
  segmentBytes?: number;
  /** zstd level (adapted to the link by the caller). */
  level: number;
  signal?: AbortSignal;
}

/**
 * What the target holds of each chunk a pass sent, so the next pass sends
 * only what changed since; and the next segment number.
 */
export class DeltaTracker {
  /** chunk key → SHA-256 of the content the target holds after the passes so far. */
  private readonly sent = new Map<number, Buffer>();
  private next: number;

  /**
   * `firstSegment`: the overlay's segment count. `inherited`: chunk keys an
   * earlier handoff brought into the launch image, which the target's launch
   * image lacks: they are sent even when equal to the launch image here.
   */
  constructor(
    firstSegment: number,
    private readonly inherited: ReadonlySet<number> = new Set(),
  ) {
    this.next = firstSegment;
  }

  /** Packs what changed since the last pass (or since synthesis) into segments. */
  async pass(changed: AsyncIterable<ChunkNow>, readers: DeltaReaders, opts: PassOptions): Promise<DeltaPass> {
    const out: DeltaSegment[] = [];
    const datas: Buffer[] = [];
    const packer = new SegmentPacker((z) => datas.push(z), opts.segmentBytes ?? 1 << 20, opts.level);
    const emit = new Emitter(packer, readers);
    const seen = new Set<number>();
    let looked = 0;
    let skipped = 0;
    const launch = Buffer.allocUnsafe(CHUNK_SIZE);
    for await (const c of changed) {
      const k = chunkKey(c.image, c.index);
      seen.add(k);
      looked++;
      const digest = sha256(c.data);
      const held = this.sent.get(k);
      let same: boolean;
      if (held) same = held.equals(digest);
      else if (this.inherited.has(k)) same = false;
      else {
        await readers.launch(c.image, c.index, launch);
        same = launch.equals(c.data);
      }
      if (same) {
        skipped++;
      } else {
        await emit.chunk(c.image, c.index, c.data, digest);
        this.sent.set(k, digest);
      }
      if (looked % 4096 === 0) await yieldNow(opts.signal);
    }
    // Sent before, not changed now: the VM gave the page back, and sees the launch content again.
    for (const [k, held] of this.sent) {
      if (seen.has(k)) continue;
      const { image, index } = chunkOfKey(k);
      await readers.launch(image as Image, index, launch);
      const digest = sha256(launch);
      if (held.equals(digest)) continue;
      looked++;
      await emit.chunk(image as Image, index, launch, digest);
      this.sent.set(k, digest);
    }
    packer.flush();
    let bytes = 0;
    packer.table.forEach((info, i) => {
      const data = datas[i]!;
      bytes += data.length;
      out.push({ index: this.next++, info: { ...info, offset: 0 }, data });
    });
    return { segments: out, kinds: emit.kinds, looked, skipped, bytes };
  }
}

/** Encodes chunks into a packer: zero, base reference, earlier payload of this pass, or a payload. */
class Emitter {
  readonly kinds = [0, 0, 0, 0, 0];
  /** The payload chunks of this pass by content digest (SHA-256: equal digests are equal content here). */
  private readonly self = new Map<string, { image: Image; index: number }>();
  private readonly base = Buffer.allocUnsafe(CHUNK_SIZE);
  private readonly xor = Buffer.allocUnsafe(CHUNK_SIZE);

  constructor(
    private readonly packer: SegmentPacker,
    private readonly readers: DeltaReaders,
  ) {}

  async chunk(image: Image, index: number, data: Buffer, digest: Buffer): Promise<void> {
    const rec = { image, index, refImage: image, refIndex: index, payloadOffset: 0 };
    if (isZero(data)) return this.add({ ...rec, kind: ChunkKind.ZERO }, digest);
    const key = digest.toString('base64');
    const prior = this.self.get(key);
    if (prior) return this.add({ ...rec, kind: ChunkKind.SELF, refImage: prior.image, refIndex: prior.index }, digest);
    await this.readers.base(image, index, this.base);
    if (this.base.equals(data)) return this.add({ ...rec, kind: ChunkKind.BASE }, digest);
    xorInto(this.xor, data, this.base);
    const kind = zeroWords(this.xor) > zeroWords(data) ? ChunkKind.XOR : ChunkKind.RAW;
    const slot = this.packer.payloadSlot();
    (kind === ChunkKind.XOR ? this.xor : data).copy(slot.buf);
    this.self.set(key, { image, index });
    this.add({ ...rec, kind, payloadOffset: slot.offset }, digest);
  }

  private add(r: Parameters<SegmentPacker['add']>[0], digest: Buffer): void {
    this.kinds[r.kind]!++;
    this.packer.add(r, digest);
  }
}
