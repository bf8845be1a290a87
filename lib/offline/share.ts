/**
 * How much of one overlay's content another overlay already holds, by chunk
 * content digest (`vmsynth overlay share A B`): the question lookaside across
 * overlays answers per chunk during a synthesis, asked here offline so that
 * its pay-off can be measured before the protocol carries it.
 *
 * Only chunks that cross the link count: XOR and RAW chunks, whose payload is
 * in a segment (ZERO and BASE chunks cost nothing, SELF chunks are copies).
 * Their final content's SHA-256 travels in their segment, so both overlays'
 * segments are read, checked against their manifests and decompressed. A
 * segment of B whose every payload chunk A holds could be built on the
 * cloudlet without crossing the link at all; one that shares some could be
 * sent as only the chunks A lacks.
 */
import { openSegment } from '../overlay/apply-segment.js';
import { segmentDigests } from '../overlay/format.js';
import { Overlay } from '../overlay/reader.js';
import { payloadChunks } from '../overlay/thin.js';

/** Payload chunks per segment, as content digests (hex). */
async function payloadDigests(dir: string): Promise<{ overlay: Overlay; segments: string[][] }> {
  const overlay = await Overlay.open(dir, { trusted: null });
  const file = overlay.segmentFile();
  try {
    const segments = overlay.body.segments.map((s, index) =>
      payloadChunks(s, segmentDigests(openSegment(index, s, file.read(s)), s)).map((c) => c.digest.toString('hex')),
    );
    return { overlay, segments };
  } finally {
    file.close();
  }
}

export interface ShareReport {
  a: { dir: string; base: string; payloadChunks: number; segmentsBytes: number };
  b: { dir: string; base: string; payloadChunks: number; segmentsBytes: number; segments: number };
  /** Whether both were built over the same base (lookaside between different bases finds only common content). */
  sameBase: boolean;
  /** B's payload chunks whose content A holds. */
  sharedChunks: number;
  sharedFraction: number;
  /** B's segments whose every payload chunk A holds, and their compressed bytes. */
  segmentsFullyShared: number;
  bytesFullyShared: number;
  /** B's compressed bytes in proportion to its shared chunks, segment by segment: what chunk lookaside could save. */
  bytesSharedEstimate: number;
}

/** How much of overlay B's payload overlay A already holds. */
export async function overlayShare(aDir: string, bDir: string): Promise<ShareReport> {
  const a = await payloadDigests(aDir);
  const b = await payloadDigests(bDir);
  const have = new Set(a.segments.flat());
  let shared = 0;
  let total = 0;
  let fully = 0;
  let fullyBytes = 0;
  let estimate = 0;
  b.segments.forEach((chunks, i) => {
    const bytes = b.overlay.body.segments[i]!.bytes;
    const hit = chunks.filter((c) => have.has(c)).length;
    shared += hit;
    total += chunks.length;
    if (chunks.length > 0 && hit === chunks.length) {
      fully++;
      fullyBytes += bytes;
    }
    if (chunks.length > 0) estimate += (bytes * hit) / chunks.length;
  });
  const side = (x: typeof a) => ({
    dir: x.overlay.dir,
    base: x.overlay.body.base.name,
    payloadChunks: x.segments.reduce((n, s) => n + s.length, 0),
    segmentsBytes: x.overlay.segmentsBytes,
  });
  return {
    a: side(a),
    b: { ...side(b), segments: b.segments.length },
    sameBase: a.overlay.body.base.disk.sha256 === b.overlay.body.base.disk.sha256,
    sharedChunks: shared,
    sharedFraction: total ? shared / total : 0,
    segmentsFullyShared: fully,
    bytesFullyShared: fullyBytes,
    bytesSharedEstimate: Math.round(estimate),
  };
}
