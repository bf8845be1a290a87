/**
 * SessionRegistry: why a resume is refused. A session that ended is told
 * with the error it ended with, while its teardown still runs and after; a
 * session handed off is told where it went; one never known says so.
 */
import t from 'tap';
import { VmsynthError } from '../../lib/core/errors.js';
import type { ServedSession } from '../../lib/server/served-session.js';
import { SessionRegistry } from '../../lib/server/session-registry.js';

function session(id: string) {
  const s = {
    id,
    client: 'c',
    ended: false,
    endedWith: null as VmsynthError | null,
    secretMatches: (x: Buffer) => x.toString() === 'secret',
  };
  return s;
}
const secret = Buffer.from('secret');
const lost = new VmsynthError('VMS_HANDOFF', 'the handoff from A did not complete');

t.test('an ending session is refused with the error it ends with, before and after its teardown', async (t) => {
  const r = new SessionRegistry(60_000);
  const s = session('s1');
  r.add(s as unknown as ServedSession);
  t.equal(r.find('s1', secret, 'c'), s, 'a live session resumes');
  t.throws(() => r.find('s1', Buffer.from('nope'), 'c'), { code: 'VMS_AUTH' }, 'not with another secret');
  s.ended = true;
  s.endedWith = lost;
  const want = { code: 'VMS_SESSION_GONE', details: { error: 'VMS_HANDOFF' }, message: /it ended: VMS_HANDOFF/ };
  t.throws(
    () => r.find('s1', secret, 'c'),
    { ...want, details: { ...want.details, reason: 'ending' } },
    'while it tears down',
  );
  r.remove(s as unknown as ServedSession, lost);
  t.throws(
    () => r.find('s1', secret, 'c'),
    { ...want, details: { ...want.details, reason: 'ended' } },
    'once it ended',
  );
});

t.test('a finished session, a moved one and an unknown one', async (t) => {
  const r = new SessionRegistry(60_000);
  const a = session('a');
  const m = session('m');
  r.add(a as unknown as ServedSession);
  r.add(m as unknown as ServedSession);
  r.remove(a as unknown as ServedSession, null);
  t.throws(() => r.find('a', secret, 'c'), { code: 'VMS_SESSION_GONE', message: /it was finished/ });
  const moved = new VmsynthError('VMS_SESSION_MOVED', 'moved to B');
  r.remove(m as unknown as ServedSession, moved);
  t.throws(() => r.find('m', secret, 'c'), moved, 'a moved session: where it went');
  t.throws(() => r.find('x', secret, 'c'), {
    code: 'VMS_SESSION_GONE',
    details: { reason: 'unknown' },
    message: /does not know it/,
  });
});
