import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { generatePair } from '../helpers/images.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { generateKey, loadSigningKey, signBytes } from '../../lib/overlay/keys.js';
import { applyOverlay, verifyOverlay } from '../../lib/offline/apply.js';
import { createHash } from 'node:crypto';
import { compress, decompress } from 'zstd-napi';
import { packr } from '../../lib/core/msgpack.js';
import { HASH_BYTES, hasDigest, MANIFEST_FILE, SEGMENTS_FILE } from '../../lib/overlay/format.js';
import { encodeBody, unpackBody } from '../../lib/overlay/manifest.js';
import { readRecord } from '../../lib/overlay/records.js';
import { loadBase } from '../../lib/vm/base.js';

t.teardown(removeTestRoot);

const bases = process.env.VMSYNTH_BASE_DIR!;
const good = path.join(testRoot, 'good');

t.before(async () => {
  const pair = await generatePair(bases, 'gen', path.join(testRoot, 'custom'), {
    memChunks: 1024,
    diskChunks: 512,
    each: 20,
  });
  await generatePair(bases, 'other', path.join(testRoot, 'custom-other'), {
    memChunks: 1024,
    diskChunks: 512,
    each: 1,
    seed: 99,
  });
  await generateKey();
  const base = await loadBase('gen');
  await buildOverlay({
    base: baseInput(base),
    custom: pair.custom,
    appPort: 8000,
    key: await loadSigningKey(),
    out: good,
    segmentBytes: 16 << 10,
  });
});

let n = 0;
/** A copy of the good overlay, altered by `damage`. */
async function damaged(damage: (dir: string) => Promise<void>): Promise<string> {
  const dir = path.join(testRoot, `bad-${n++}`);
  await fsp.cp(good, dir, { recursive: true });
  await damage(dir);
  return dir;
}

async function rewriteEnvelope(dir: string, edit: (env: Record<string, any>) => void): Promise<void> {
  const file = path.join(dir, MANIFEST_FILE);
  const env = packr.unpack(await fsp.readFile(file));
  edit(env);
  await fsp.writeFile(file, packr.pack(env));
}

/** Applies, expecting `code`, and checks nothing was left in the output's directory. */
async function refused(
  t: Pick<typeof import('tap').default, 'rejects' | 'same'>,
  dir: string,
  code: string,
  base = 'gen',
): Promise<void> {
  const parent = path.join(testRoot, `out-${n++}`);
  await fsp.mkdir(parent);
  await t.rejects(
    applyOverlay({ overlay: dir, base, out: path.join(parent, 'synth'), verifyBase: false }),
    { code },
    `apply: ${code}`,
  );
  t.same(await fsp.readdir(parent), [], 'no partial output');
  await t.rejects(verifyOverlay({ overlay: dir, base }), { code }, `verify: ${code}`);
}

t.test('a truncated segments file', async (t) => {
  const dir = await damaged(async (d) => {
    const f = path.join(d, SEGMENTS_FILE);
    await fsp.truncate(f, (await fsp.stat(f)).size - 100);
  });
  await refused(t, dir, 'VMS_OVERLAY_CORRUPT');
});

t.test('a corrupt segment (same size) is caught by its hash, mid-apply', async (t) => {
  const dir = await damaged(async (d) => {
    const f = path.join(d, SEGMENTS_FILE);
    const b = await fsp.readFile(f);
    b.writeUInt8(b.readUInt8(b.length - 10) ^ 0x40, b.length - 10);
    await fsp.writeFile(f, b);
  });
  await refused(t, dir, 'VMS_OVERLAY_CORRUPT');
});

t.test('a truncated or missing manifest', async (t) => {
  const dir = await damaged(async (d) => {
    const f = path.join(d, MANIFEST_FILE);
    await fsp.truncate(f, (await fsp.stat(f)).size >> 1);
  });
  await refused(t, dir, 'VMS_OVERLAY_CORRUPT');
  await refused(t, await damaged((d) => fsp.rm(path.join(d, MANIFEST_FILE))), 'VMS_OVERLAY_CORRUPT');
});

t.test('the wrong base', async (t) => {
  await refused(t, good, 'VMS_BASE_MISMATCH', 'other');
});

t.test('a manifest altered after signing', async (t) => {
  const dir = await damaged((d) =>
    rewriteEnvelope(d, (env) => {
      const body = unpackBody(env.body) as Record<string, any>;
      body.vm.appPort = 22;
      env.body = encodeBody(body);
    }),
  );
  await refused(t, dir, 'VMS_BAD_SIGNATURE');
  await refused(
    t,
    await damaged((d) =>
      rewriteEnvelope(d, (env) => {
        delete env.signature;
      }),
    ),
    'VMS_BAD_SIGNATURE',
  );
});

t.test('a signature by a key this host does not trust', async (t) => {
  const stranger = await generateKey(path.join(testRoot, 'stranger-keys'));
  const key = await loadSigningKey(stranger.privateKeyFile);
  const dir = await damaged((d) =>
    rewriteEnvelope(d, (env) => {
      env.signature = { alg: 'ed25519', keyId: key.keyId, publicKey: key.publicKeyRaw, sig: signBytes(key, env.body) };
    }),
  );
  await refused(t, dir, 'VMS_UNTRUSTED_KEY');
  const synth = path.join(testRoot, 'trusted-by-flag');
  await applyOverlay({ overlay: dir, base: 'gen', out: synth, verifyBase: false, trust: [stranger.publicKeyFile] });
  t.ok((await fsp.stat(path.join(synth, 'memory.raw'))).isFile(), '--trust FILE accepts it');
});

t.test('an unknown format version', async (t) => {
  await refused(
    t,
    await damaged((d) =>
      rewriteEnvelope(d, (env) => {
        env.format = 'vmsynth-overlay/99';
      }),
    ),
    'VMS_OVERLAY_FORMAT',
  );
  // A validly signed body of another version is refused too.
  const key = await loadSigningKey();
  const dir = await damaged((d) =>
    rewriteEnvelope(d, (env) => {
      const body = unpackBody(env.body) as Record<string, any>;
      body.format = 'vmsynth-overlay/99';
      env.body = encodeBody(body);
      env.signature.sig = signBytes(key, env.body);
    }),
  );
  await refused(t, dir, 'VMS_OVERLAY_FORMAT');
  // A format or chunk size that is a map whose toString is not a function: String() of it throws (a fuzz find).
  for (const [field, code] of [
    ['format', 'VMS_OVERLAY_FORMAT'],
    ['chunkSize', 'VMS_OVERLAY_CORRUPT'],
  ] as const) {
    const odd = await damaged((d) =>
      rewriteEnvelope(d, (env) => {
        const body = unpackBody(env.body) as Record<string, any>;
        body[field] = { toString: {} };
        env.body = encodeBody(body);
        env.signature.sig = signBytes(key, env.body);
      }),
    );
    await refused(t, odd, code);
  }
  // An overlay of the previous version says what to do about it.
  const v1 = await damaged((d) =>
    rewriteEnvelope(d, (env) => {
      env.format = 'vmsynth-overlay/1';
    }),
  );
  await t.rejects(
    verifyOverlay({ overlay: v1, base: 'gen' }),
    { code: 'VMS_OVERLAY_FORMAT', details: { format: 'vmsynth-overlay/1', rebuild: true } },
    'a vmsynth-overlay/1 overlay: rebuild it',
  );
});

t.test(
  'a chunk whose digest in its (validly signed) segment is not its content: verify names it, apply does not look',
  async (t) => {
    const key = await loadSigningKey();
    let target = { image: -1, index: -1 };
    const dir = await damaged(async (d) => {
      const segFile = path.join(d, SEGMENTS_FILE);
      const segs = await fsp.readFile(segFile);
      let rewritten = segs;
      await rewriteEnvelope(d, (env) => {
        const body = unpackBody(env.body) as Record<string, any>;
        const s = body.segments[0];
        const raw = Buffer.from(decompress(segs.subarray(s.offset, s.offset + s.bytes)));
        const digests = raw.length - s.digests * HASH_BYTES;
        raw[digests + HASH_BYTES * (s.digests - 1)]! ^= 1; // the last digest: the last BASE, XOR or RAW chunk's
        let last = s.count - 1;
        while (!hasDigest(readRecord(s.chunks, last).kind)) last--;
        const r = readRecord(s.chunks, last);
        target = { image: r.image, index: r.index };
        const z = compress(raw);
        const rest = segs.subarray(s.offset + s.bytes);
        for (const later of body.segments.slice(1)) later.offset += z.length - s.bytes;
        Object.assign(s, { bytes: z.length, sha256: createHash('sha256').update(z).digest() });
        rewritten = Buffer.concat([segs.subarray(0, s.offset), z, rest]);
        env.body = encodeBody(body);
        env.signature.sig = signBytes(key, env.body);
      });
      await fsp.writeFile(segFile, rewritten);
    });
    await t.rejects(
      verifyOverlay({ overlay: dir, base: 'gen' }),
      { code: 'VMS_OVERLAY_CORRUPT', details: { segment: 0, ...target } },
      'verify: the chunk is named',
    );
    const out = path.join(testRoot, 'applied-despite-digest');
    await applyOverlay({ overlay: dir, base: 'gen', out, verifyBase: false });
    t.ok(
      (await fsp.stat(path.join(out, 'memory.raw'))).isFile(),
      'apply trusts the segment hash and rebuilds the images',
    );
  },
);

t.test('a signed but inconsistent manifest (self reference to a later chunk)', async (t) => {
  const key = await loadSigningKey();
  const dir = await damaged((d) =>
    rewriteEnvelope(d, (env) => {
      const body = unpackBody(env.body) as Record<string, any>;
      const s = body.segments[0];
      s.chunks[1] = 2; // kind SELF
      s.chunks[2] = 1; // -> disk
      s.chunks.writeUInt32LE(500, 8); // chunk 500, never listed before
      env.body = encodeBody(body);
      env.signature.sig = signBytes(key, env.body);
    }),
  );
  await refused(t, dir, 'VMS_OVERLAY_CORRUPT');
});
