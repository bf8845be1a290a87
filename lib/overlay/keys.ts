/**
 * Ed25519 signing keys for overlay manifests, and the set of public keys a
 * host trusts.
 *
 * Layout of the key directory (VMSYNTH_KEY_DIR, default /var/lib/vmsynth/keys):
 *   <keyId>.key        private key, PKCS#8 PEM, mode 0600
 *   <keyId>.pub        its public key, SPKI PEM
 *   trusted/<keyId>.pub  public keys whose overlays this host accepts
 * A key id is the first 16 hex digits of SHA-256 over the raw 32-byte public key.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import { keyDir } from '../core/paths.js';

export interface SigningKey {
  keyId: string;
  privateKey: KeyObject;
  publicKeyRaw: Buffer;
  file: string;
}

export function rawPublicKey(key: KeyObject): Buffer {
  const jwk = (key.type === 'public' ? key : createPublicKey(key)).export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string')
    throw new VmsynthError('VMS_USAGE', 'the key is not an Ed25519 key');
  return Buffer.from(jwk.x, 'base64url');
}

export function keyIdOf(publicKeyRaw: Uint8Array): string {
  return createHash('sha256').update(publicKeyRaw).digest('hex').slice(0, 16);
}

export function publicKeyFromRaw(raw: Uint8Array): KeyObject {
  return createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') },
    format: 'jwk',
  });
}

export interface GeneratedKey {
  keyId: string;
  privateKeyFile: string;
  publicKeyFile: string;
  trustedFile: string;
}

/** Creates a key pair in the key directory and trusts its public key on this host. */
export async function generateKey(dir: string = keyDir()): Promise<GeneratedKey> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyId = keyIdOf(rawPublicKey(publicKey));
  await fsp.mkdir(path.join(dir, 'trusted'), { recursive: true, mode: 0o700 });
  const privateKeyFile = path.join(dir, `${keyId}.key`);
  const publicKeyFile = path.join(dir, `${keyId}.pub`);
  const trustedFile = path.join(dir, 'trusted', `${keyId}.pub`);
  const pub = publicKey.export({ type: 'spki', format: 'pem' });
  await fsp.writeFile(privateKeyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
  await fsp.writeFile(publicKeyFile, pub, { mode: 0o644 });
  await fsp.writeFile(trustedFile, pub, { mode: 0o644 });
  return { keyId, privateKeyFile, publicKeyFile, trustedFile };
}

async function readKeyFile(file: string): Promise<string> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new VmsynthError(
      'VMS_NO_KEY',
      `cannot read key ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { cause: err },
    );
  }
}

/**
 * The signing key: `spec` is a key file, or a key id in the key directory;
 * without it, the only private key in the key directory.
 */
export async function loadSigningKey(spec?: string, dir: string = keyDir()): Promise<SigningKey> {
  let file: string;
  if (spec && (spec.includes('/') || spec.endsWith('.key'))) {
    file = path.resolve(spec);
  } else if (spec) {
    file = path.join(dir, `${spec}.key`);
  } else {
    const keys = (await fsp.readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.key')).sort();
    if (keys.length === 0) throw new VmsynthError('VMS_NO_KEY', `no signing key in ${dir}`);
    if (keys.length > 1)
      throw new VmsynthError(
        'VMS_USAGE',
        `${dir} holds ${keys.length} signing keys (${keys.join(', ')}): pass --key to pick one`,
      );
    file = path.join(dir, keys[0]!);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(await readKeyFile(file));
  } catch (err) {
    if (err instanceof VmsynthError) throw err;
    throw new VmsynthError('VMS_NO_KEY', `${file} is not a PEM private key`, { cause: err });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519')
    throw new VmsynthError(
      'VMS_NO_KEY',
      `${file} is a ${privateKey.asymmetricKeyType} key; overlays are signed with Ed25519`,
    );
  const publicKeyRaw = rawPublicKey(privateKey);
  return { keyId: keyIdOf(publicKeyRaw), privateKey, publicKeyRaw, file };
}

export function signBytes(key: SigningKey, bytes: Uint8Array): Buffer {
  return sign(null, bytes, key.privateKey);
}

async function loadPublicKey(file: string): Promise<{ keyId: string; raw: Buffer }> {
  try {
    const raw = rawPublicKey(createPublicKey(await readKeyFile(file)));
    return { keyId: keyIdOf(raw), raw };
  } catch (err) {
    if (err instanceof VmsynthError) throw err;
    throw new VmsynthError('VMS_USAGE', `${file} is not a PEM public key`, { cause: err });
  }
}

/** Adds a public key file to this host's trusted keys; returns its key id. */
export async function trustKey(file: string, dir: string = keyDir()): Promise<string> {
  const { keyId } = await loadPublicKey(file);
  await fsp.mkdir(path.join(dir, 'trusted'), { recursive: true, mode: 0o700 });
  await fsp.copyFile(file, path.join(dir, 'trusted', `${keyId}.pub`));
  return keyId;
}

/** Trusted public keys by key id: the key directory's trusted/ plus any extra files. */
export async function trustedKeys(extra: string[] = [], dir: string = keyDir()): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const tdir = path.join(dir, 'trusted');
  const files = (await fsp.readdir(tdir).catch(() => [] as string[]))
    .filter((f) => f.endsWith('.pub'))
    .map((f) => path.join(tdir, f));
  for (const f of [...files, ...extra]) {
    const { keyId, raw } = await loadPublicKey(f);
    out.set(keyId, raw);
  }
  return out;
}

/**
 * Checks an Ed25519 signature over `bytes` by the key `publicKeyRaw`, whose
 * id must be `keyId` and which must be trusted (unless `trusted` is null:
 * then only the signature's consistency is checked, as `inspect` does).
 */
export function verifySignature(
  bytes: Uint8Array,
  sig: { keyId: string; publicKey: Uint8Array; sig: Uint8Array },
  trusted: Map<string, Buffer> | null,
): void {
  if (keyIdOf(sig.publicKey) !== sig.keyId)
    throw new VmsynthError(
      'VMS_BAD_SIGNATURE',
      `the manifest's key id ${sig.keyId} does not match the public key it carries`,
    );
  if (trusted) {
    const known = trusted.get(sig.keyId);
    if (!known)
      throw new VmsynthError(
        'VMS_UNTRUSTED_KEY',
        `the overlay is signed by key ${sig.keyId}, which this host does not trust`,
        { details: { keyId: sig.keyId } },
      );
    if (!known.equals(Buffer.from(sig.publicKey)))
      throw new VmsynthError('VMS_BAD_SIGNATURE', `the public key in the manifest is not the trusted key ${sig.keyId}`);
  }
  let ok: boolean;
  try {
    ok = verify(null, bytes, publicKeyFromRaw(sig.publicKey), sig.sig);
  } catch {
    ok = false;
  }
  if (!ok)
    throw new VmsynthError('VMS_BAD_SIGNATURE', `the overlay manifest's signature by key ${sig.keyId} does not verify`);
}
