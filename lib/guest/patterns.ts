/**
 * The byte patterns of the test guest, reproduced on the host: the data
 * disk's contents and the offload app's working set, and the app's digest.
 * Tests use them to check that what a resumed guest reads is exactly what
 * was captured (guest/offload-app.c has the C side of the same functions).
 */
import { createCipheriv } from 'node:crypto';

const MASK = (1n << 64n) - 1n;
const DIGEST_K = 0x9e3779b97f4a7c15n;

/** The app's digest over little-endian u64 words, continuing from h. */
export function appDigest(data: Buffer, h = 0n): bigint {
  const words = new BigUint64Array(data.buffer, data.byteOffset, Math.floor(data.length / 8));
  for (const w of words) {
    h = (((h << 5n) | (h >> 59n)) & MASK) ^ w;
    h = (h * DIGEST_K) & MASK;
  }
  return h;
}

/** The first `bytes` of the app's working-set pattern (xorshift64*, fixed seed). */
export function workingSetPattern(bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  const words = new BigUint64Array(out.buffer, out.byteOffset, bytes / 8);
  let x = 0x766d73796e7468n;
  for (let i = 0; i < words.length; i++) {
    x ^= x >> 12n;
    x = (x ^ (x << 25n)) & MASK;
    x ^= x >> 27n;
    words[i] = (x * 0x2545f4914f6cdd1dn) & MASK;
  }
  return out;
}

/** Deterministic pseudo-random disk bytes (AES-128-CTR keystream of a fixed key). */
export function diskPattern(bytes: number, seed = 'vmsynth-test-disk'): Buffer {
  const key = Buffer.alloc(16);
  key.write(seed.slice(0, 16));
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(bytes)), cipher.final()]);
}

export function hex64(v: bigint): string {
  return v.toString(16).padStart(16, '0');
}
