/**
 * Size-capped zstd decompression of one frame, for bytes not yet trusted
 * (manifest bodies, device states, segments).
 */
import zstdBinding from 'zstd-napi/binding.js';

/** One per thread (a worker has its own module instance). */
const dctx = new zstdBinding.DCtx();

/** The most a zstd frame of n bytes can decompress to is n × this: an RLE block (4 bytes) regenerates at most 128 KiB. */
const ZSTD_MAX_RATIO = (128 << 10) / 4;

/**
 * Decompresses `bytes`, which must be exactly one zstd frame declaring a content size of at most
 * `limit`, into `into` when it has room. The declared size is allocated before decompressing, so
 * a declaration more than the frame's bytes could hold is refused first (fuzzing found a 13-byte
 * body declaring 512 MiB that was allocated in full). Throws plain Errors: callers say what did
 * not decompress. Imports only zstd-napi's binding: a segment worker starts faster without the
 * rest of the package.
 */
export function decompressFrame(bytes: Uint8Array, limit: number, into?: Buffer): Buffer {
  if (zstdBinding.findFrameCompressedSize(bytes) !== bytes.length) throw new Error('not exactly one zstd frame');
  const size = zstdBinding.getFrameContentSize(bytes);
  if (size === null) throw new Error('the frame does not declare its size');
  if (size > limit || size > bytes.length * ZSTD_MAX_RATIO)
    throw new Error(
      `declared size ${size} is over the limit of ${Math.min(limit, bytes.length * ZSTD_MAX_RATIO)} bytes`,
    );
  const dst = into && into.length >= size ? into.subarray(0, size) : Buffer.allocUnsafe(size);
  return dst.subarray(0, dctx.decompress(dst, bytes));
}

/**
 * Decompresses `bytes` into `dst` (exactly its size, at most), without the
 * frame checks: only for bytes already checked against a signed digest.
 * Returns the bytes written.
 */
export function decompressInto(bytes: Uint8Array, dst: Uint8Array): number {
  return dctx.decompress(dst, bytes);
}
