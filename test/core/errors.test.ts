import t from 'tap';
import {
  asVmsynthError,
  ERRORS,
  isErrorCode,
  VmsynthError,
  type ErrorCode,
  type ErrorSpec,
} from '../../lib/core/errors.js';

/** sysexits.h: the exit statuses the catalogue draws from (besides 130, 128 + SIGINT). */
const SYSEXITS: Record<number, string> = {
  64: 'EX_USAGE',
  65: 'EX_DATAERR',
  66: 'EX_NOINPUT',
  67: 'EX_NOUSER',
  68: 'EX_NOHOST',
  69: 'EX_UNAVAILABLE',
  70: 'EX_SOFTWARE',
  71: 'EX_OSERR',
  72: 'EX_OSFILE',
  73: 'EX_CANTCREAT',
  74: 'EX_IOERR',
  75: 'EX_TEMPFAIL',
  76: 'EX_PROTOCOL',
  77: 'EX_NOPERM',
  78: 'EX_CONFIG',
};

/** Codes a script must be able to act on alike: each class shares one exit status, and no two classes share one. */
const CLASSES: Record<string, ErrorCode[]> = {
  usage: ['VMS_USAGE'],
  'damaged or mismatched data': [
    'VMS_BASE_CORRUPT',
    'VMS_BASE_OUTDATED',
    'VMS_HASH_MISMATCH',
    'VMS_MEMORY_SIZE_MISMATCH',
    'VMS_OVERLAY_CORRUPT',
    'VMS_OVERLAY_FORMAT',
    'VMS_BASE_MISMATCH',
    'VMS_BAD_SIGNATURE',
  ],
  'missing input': ['VMS_BASE_NOT_FOUND', 'VMS_BASE_FILE_MISSING', 'VMS_NO_KEY', 'VMS_STORE_NOT_FOUND'],
  'already exists': ['VMS_BASE_EXISTS', 'VMS_OVERLAY_EXISTS'],
  'retry later': [
    'VMS_BUSY',
    'VMS_SHUTTING_DOWN',
    'VMS_LIMIT',
    'VMS_RATE_LIMITED',
    'VMS_GUEST_TIMEOUT',
    'VMS_SESSION_MOVED',
    'VMS_HANDOFF',
  ],
  protocol: ['VMS_PROTOCOL', 'VMS_FRAME_TOO_LARGE'],
  'not allowed': ['VMS_AUTH', 'VMS_UNTRUSTED_KEY'],
  config: ['VMS_CONFIG'],
  interrupted: ['VMS_INTERRUPTED'],
};

t.test(
  'every code has a hint and a sysexits.h exit status; codes of one class share theirs, classes differ',
  async (t) => {
    for (const [code, spec] of Object.entries(ERRORS)) {
      t.match(code, /^VMS_[A-Z_]+$/, `${code} is a stable VMS_ code`);
      t.ok(spec.hint.length > 20, `${code} says what to do`);
      t.ok(
        SYSEXITS[spec.exit] !== undefined || (code === 'VMS_INTERRUPTED' && spec.exit === 130),
        `${code} exits ${spec.exit}: a sysexits.h status (${SYSEXITS[spec.exit] ?? 'none'}), or 130 for an interruption`,
      );
    }
    const classOf = new Map<number, string>();
    for (const [name, codes] of Object.entries(CLASSES)) {
      const exits = new Set(codes.map((c) => ERRORS[c].exit));
      t.equal(exits.size, 1, `${name}: ${codes.join(', ')} share one exit status (${[...exits].join(', ')})`);
      const exit = ERRORS[codes[0]!].exit;
      t.notOk(classOf.has(exit), `${name}: exit ${exit} is not also ${classOf.get(exit) ?? 'another class'}'s`);
      classOf.set(exit, name);
    }
    const strays = (Object.entries(ERRORS) as [ErrorCode, ErrorSpec][])
      .filter(([code, spec]) => classOf.has(spec.exit) && !CLASSES[classOf.get(spec.exit)!]!.includes(code))
      .map(([code, spec]) => `${code} exits ${spec.exit}, the status of class ${classOf.get(spec.exit)}`);
    t.same(strays, [], "no code outside a class exits with that class's status");
    t.same(
      [ERRORS.VMS_USAGE.exit, ERRORS.VMS_CONFIG.exit, ERRORS.VMS_BUSY.exit].map((e) => SYSEXITS[e]),
      ['EX_USAGE', 'EX_CONFIG', 'EX_TEMPFAIL'],
      'usage, config and retry-later exit with the sysexits.h status named for them',
    );
  },
);

t.test('errors carry code, hint, details and serialize for the wire', async (t) => {
  const e = new VmsynthError('VMS_HASH_MISMATCH', 'memory.raw differs', { details: { file: 'memory.raw' } });
  t.equal(e.code, 'VMS_HASH_MISMATCH');
  t.equal(e.exitCode, ERRORS.VMS_HASH_MISMATCH.exit);
  t.same(e.toJSON(), {
    code: 'VMS_HASH_MISMATCH',
    message: 'memory.raw differs',
    hint: ERRORS.VMS_HASH_MISMATCH.hint,
    details: { file: 'memory.raw' },
  });
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
