/**
 * Admission against a fake host (no libvirt, no base hashing): the order of
 * its checks, each refusal's code and details, and what it admits. The
 * manifest is a real signed one over a generated base.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmsynthError } from '../../lib/core/errors.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { MANIFEST_FILE } from '../../lib/overlay/format.js';
import { generateKey, loadSigningKey, trustedKeys } from '../../lib/overlay/keys.js';
import { Admission, defaultLimits, type AdmissionHost, type AdmissionLimits } from '../../lib/server/admission.js';
import { loadBase } from '../../lib/vm/base.js';
import { generatePair } from '../helpers/images.js';

t.teardown(removeTestRoot);
await generatePair(process.env.VMSYNTH_BASE_DIR!, 'gen', path.join(testRoot, 'c'), {
  memChunks: 256,
  diskChunks: 128,
  each: 4,
});
await generateKey();
const base = await loadBase('gen');
const c = (f: string) => path.join(testRoot, 'c', f);
await buildOverlay({
  base: baseInput(base),
  custom: { memory: c('memory.raw'), disk: c('disk.raw'), deviceState: c('device.state') },
  appPort: 8000,
  key: await loadSigningKey(),
  out: path.join(testRoot, 'ov'),
});
const manifest = await fsp.readFile(path.join(testRoot, 'ov', MANIFEST_FILE));
const trusted = await trustedKeys([]);
const guestRam = base.manifest.memory.bytes;

interface Calls {
  findBase: number;
  checkBase: number;
  checkAccel: number;
}

function admission(
  limits: Partial<AdmissionLimits>,
  host: Partial<AdmissionHost> = {},
): { a: Admission; calls: Calls } {
  const calls: Calls = { findBase: 0, checkBase: 0, checkAccel: 0 };
  const a = new Admission(
    { ...defaultLimits(), ...limits },
    {
      trusted,
      authRequired: true,
      sessions: () => 1,
      findBase: async () => {
        calls.findBase++;
        return base;
      },
      checkBase: async () => {
        calls.checkBase++;
      },
      checkAccel: async () => {
        calls.checkAccel++;
      },
      ...host,
    },
  );
  return { a, calls };
}

t.test('a session within every limit is admitted over its base, after every check', async (t) => {
  const { a, calls } = admission({});
  const got = await a.admit('phone', manifest);
  t.equal(got.base, base, 'the base the host found');
  t.equal(got.overlay.body.base.name, 'gen', 'the overlay the manifest describes');
  t.same(calls, { findBase: 1, checkBase: 1, checkAccel: 1 }, 'base found, hashed, and its accelerator checked');
});

t.test('the server-wide limit counts the session being admitted', async (t) => {
  const { a, calls } = admission({ maxSessions: 2 }, { sessions: () => 3 });
  await t.rejects(a.admit('phone', manifest), { code: 'VMS_BUSY', details: { limit: 'maxSessions', max: 2 } });
  t.same(calls, { findBase: 0, checkBase: 0, checkAccel: 0 }, 'refused before reading the manifest');
  const { a: ok } = admission({ maxSessions: 2 }, { sessions: () => 2 });
  t.ok(await ok.admit('phone', manifest), 'two with this one: admitted');
});

t.test('the per-client limit applies only when clients authenticate', async (t) => {
  const sessions = (client?: string) => (client === 'phone' ? 2 : 2);
  const { a } = admission({ maxSessionsPerClient: 1 }, { sessions });
  await t.rejects(a.admit('phone', manifest), {
    code: 'VMS_LIMIT',
    details: { limit: 'maxSessionsPerClient', client: 'phone', max: 1 },
  });
  const { a: open } = admission({ maxSessionsPerClient: 1 }, { sessions, authRequired: false });
  t.ok(await open.admit('anonymous', manifest), 'no authentication: no per-client limit');
  const { a: none } = admission({ maxSessionsPerClient: null }, { sessions });
  t.ok(await none.admit('phone', manifest), 'null: no per-client limit');
});

t.test('the memory cap counts guest RAM and the in-flight window', async (t) => {
  const inFlight = 1 << 20;
  const { a, calls } = admission({ sessionMemoryBytes: guestRam + inFlight - 1, maxInFlightBytes: inFlight });
  await t.rejects(a.admit('phone', manifest), {
    code: 'VMS_LIMIT',
    details: { limit: 'sessionMemory', bytes: guestRam + inFlight, max: guestRam + inFlight - 1 },
  });
  t.same(calls, { findBase: 1, checkBase: 0, checkAccel: 0 }, 'refused before hashing the base');
  const { a: exact } = admission({ sessionMemoryBytes: guestRam + inFlight, maxInFlightBytes: inFlight });
  t.ok(await exact.admit('phone', manifest), 'exactly at the cap: admitted');
  const { a: none } = admission({ sessionMemoryBytes: null });
  t.ok(await none.admit('phone', manifest), 'null: no cap');
});

t.test("the manifest and the host's refusals pass through with their codes", async (t) => {
  const { a } = admission({});
  await t.rejects(a.admit('phone', Buffer.from('not a manifest')), { code: 'VMS_OVERLAY_CORRUPT' });
  const { a: untrusting } = admission({}, { trusted: new Map() });
  await t.rejects(untrusting.admit('phone', manifest), { code: 'VMS_UNTRUSTED_KEY' });
  const fail =
    (code: 'VMS_BASE_NOT_FOUND' | 'VMS_HASH_MISMATCH' | 'VMS_ACCEL_MISMATCH') => async (): Promise<never> => {
      throw new VmsynthError(code, 'no');
    };
  const { a: noBase } = admission({}, { findBase: fail('VMS_BASE_NOT_FOUND') });
  await t.rejects(noBase.admit('phone', manifest), { code: 'VMS_BASE_NOT_FOUND' });
  const { a: badBase, calls } = admission({}, { checkBase: fail('VMS_HASH_MISMATCH') });
  await t.rejects(badBase.admit('phone', manifest), { code: 'VMS_HASH_MISMATCH' });
  t.equal(calls.checkAccel, 0, 'a damaged base is refused before the accelerator is asked');
  const { a: otherAccel } = admission({}, { checkAccel: fail('VMS_ACCEL_MISMATCH') });
  await t.rejects(otherAccel.admit('phone', manifest), { code: 'VMS_ACCEL_MISMATCH' });
});
