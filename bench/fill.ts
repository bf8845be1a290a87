/** Generated image content shared by the benches. */
import { randomFillSync } from 'node:crypto';

/** Half-compressible content: 1 KiB random, then a repeated phrase. */
export function fillChunky(buf: Buffer): void {
  const phrase = Buffer.from('vmsynth overlay bench: compressible filler text, ');
  for (let o = 0; o < buf.length; o += 4096) {
    randomFillSync(buf, o, 1024);
    for (let p = o + 1024; p < o + 4096; p += phrase.length)
      phrase.copy(buf, p, 0, Math.min(phrase.length, o + 4096 - p));
  }
}
