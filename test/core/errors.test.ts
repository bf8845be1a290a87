import t from 'tap';
import { asVmsynthError, ERRORS, isErrorCode, VmsynthError } from '../../lib/core/errors.js';

t.test('every code has a hint and a distinct-enough exit status', async (t) => {
  for (const [code, spec] of Object.entries(ERRORS)) {
    t.match(code, /^VMS_[A-Z_]+$/, `${code} is a stable VMS_ code`);
    t.ok(spec.hint.length > 20, `${code} says what to do`);
    t.ok(spec.exit > 0 && spec.exit < 256, `${code} exits non-zero`);
  }
});

t.test('errors carry code, hint, details and serialize for the wire', async (t) => {
  const e = new VmsynthError('VMS_HASH_MISMATCH', 'memory.raw differs', { details: { file: 'memory.raw' } });
  t.equal(e.code, 'VMS_HASH_MISMATCH');
  t.equal(e.exitCode, ERRORS.VMS_HASH_MISMATCH.exit);
  t.same(e.toJSON(), { code: 'VMS_HASH_MISMATCH', message: 'memory.raw differs', hint: ERRORS.VMS_HASH_MISMATCH.hint, details: { file: 'memory.raw' } });
  t.ok(isErrorCode(e, 'VMS_HASH_MISMATCH'));
  t.notOk(isErrorCode(new Error('x'), 'VMS_HASH_MISMATCH'));
});

t.test('foreign errors are wrapped, ours kept', async (t) => {
  const ours = new VmsynthError('VMS_QMP', 'x');
  t.equal(asVmsynthError(ours), ours);
  const wrapped = asVmsynthError(new Error('boom'), 'VMS_LIBVIRT');
  t.equal(wrapped.code, 'VMS_LIBVIRT');
  t.equal(wrapped.message, 'boom');
  t.equal(asVmsynthError('str').code, 'VMS_INTERNAL');
});
