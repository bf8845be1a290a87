/**
 * MessagePack as vmsynth writes it, on disk (overlay manifests) and on the
 * wire (frame headers): plain maps, no msgpackr records or extension types,
 * so any MessagePack decoder (Android, iOS, Python) reads it.
 */
import { Packr } from 'msgpackr';

/** MessagePack without msgpackr's records extension. */
export const packr = new Packr({ useRecords: false, moreTypes: false, bundleStrings: false, mapsAsObjects: true });

/**
 * The one MessagePack value `bytes` holds, which must end exactly where `bytes` ends. Read as a
 * sequence stopped after its first value: msgpackr's own check for bytes left over renders the
 * whole decoded value as JSON into its error message (fuzzing found an 8 MiB envelope followed by
 * one stray byte taking 2.4 s; 100 MiB took a minute and 5 GB).
 */
export function unpackOne(bytes: Uint8Array): unknown {
  let value: unknown;
  let end = 0;
  packr.unpackMultiple(bytes, (v: unknown, _start?: number, stop?: number) => {
    value = v;
    end = stop ?? 0;
    return false;
  });
  if (end !== bytes.length) throw new Error(`${bytes.length - end} bytes follow the value`);
  return value;
}

/** Why a MessagePack value is not plain: an extension type, a reserved byte, truncation or nesting too deep. */
export class NotPlainError extends Error {}

/**
 * Where the one MessagePack value at `bytes[at]` ends, checking that it uses only the standard
 * types: nil, booleans, integers, floats, strings, binary, arrays and maps, nested at most
 * `maxDepth` deep. Extension types (fixext, ext 8/16/32) and the reserved byte 0xc1 throw
 * NotPlainError. msgpackr decodes several extension types into JavaScript values (a timestamp into
 * a Date, type 0 into undefined, 0x42 into a BigInt, 0x74 into a typed array), so a header that used
 * them passed every field check that did not look at it; the wire protocol forbids them.
 */
export function plainValueEnd(bytes: Uint8Array, at = 0, maxDepth = 32): number {
  const need = (n: number) => {
    if (at + n > bytes.length) throw new NotPlainError('the value is truncated');
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // Values still to skip; each entry is a count of values at one nesting level.
  const pending: number[] = [1];
  while (pending.length > 0) {
    if (pending[pending.length - 1] === 0) {
      pending.pop();
      continue;
    }
    pending[pending.length - 1]!--;
    need(1);
    const b = bytes[at++]!;
    let skip = 0;
    let items = 0;
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) skip = 0;
    else if (b >= 0x80 && b <= 0x8f) items = (b & 0x0f) * 2;
    else if (b >= 0x90 && b <= 0x9f) items = b & 0x0f;
    else if (b >= 0xa0 && b <= 0xbf) skip = b & 0x1f;
    else
      switch (b) {
        case 0xcc:
        case 0xd0:
          skip = 1;
          break;
        case 0xcd:
        case 0xd1:
          skip = 2;
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          skip = 4;
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          skip = 8;
          break;
        case 0xc4:
        case 0xd9:
          need(1);
          skip = bytes[at++]!;
          break;
        case 0xc5:
        case 0xda:
          need(2);
          skip = view.getUint16(at);
          at += 2;
          break;
        case 0xc6:
        case 0xdb:
          need(4);
          skip = view.getUint32(at);
          at += 4;
          break;
        case 0xdc:
          need(2);
          items = view.getUint16(at);
          at += 2;
          break;
        case 0xde:
          need(2);
          items = view.getUint16(at) * 2;
          at += 2;
          break;
        case 0xdd:
          need(4);
          items = view.getUint32(at);
          at += 4;
          break;
        case 0xdf:
          need(4);
          items = view.getUint32(at) * 2;
          at += 4;
          break;
        default:
          // 0xc1 (never used), 0xc7-0xc9 (ext 8/16/32), 0xd4-0xd8 (fixext 1-16).
          throw new NotPlainError(b === 0xc1 ? 'the reserved byte 0xc1' : `an extension type (0x${b.toString(16)})`);
      }
    need(skip);
    at += skip;
    if (items > 0) {
      if (pending.length > maxDepth) throw new NotPlainError(`nested deeper than ${maxDepth}`);
      // Each item takes at least one byte: a count beyond the bytes left is truncation, found now.
      need(items);
      pending.push(items);
    }
  }
  return at;
}
