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

/**
 * The first MessagePack value at the front of `bytes` and where it ends (bytes may follow: a
 * frame's payload follows its header).
 */
export function unpackFirst(bytes: Uint8Array): { value: unknown; end: number } {
  let value: unknown;
  let end = 0;
  packr.unpackMultiple(bytes, (v: unknown, _start?: number, stop?: number) => {
    value = v;
    end = stop ?? end;
    return false;
  });
  return { value, end };
}
