/** Scopes: close() runs every step newest first; release() skips the lasting ones. */
import t from 'tap';
import { channels } from '../../lib/core/diagnostics.js';
import { Scope } from '../../lib/core/scope.js';

t.test('close() runs every step, newest first, and goes on past a failure', async (t) => {
  const s = new Scope();
  const ran: string[] = [];
  const failed: unknown[] = [];
  const on = (m: unknown) => failed.push(m);
  channels.cleanupFailed.subscribe(on);
  t.teardown(() => channels.cleanupFailed.unsubscribe(on));
  s.defer('a', () => ran.push('a'));
  s.defer('b', () => ran.push('b'), { lasting: true });
  s.defer('c', () => {
    throw new Error('c fails');
  });
  await s.close();
  t.same(ran, ['b', 'a']);
  t.equal(failed.length, 1, 'the failure is published');
  t.throws(() => s.defer('d', () => undefined), { code: 'VMS_INTERNAL' }, 'a closed scope takes no more steps');
});

t.test('release() runs the steps that are not lasting and forgets the lasting ones', async (t) => {
  const s = new Scope();
  const ran: string[] = [];
  s.defer('remove the run directory', () => ran.push('rm'), { lasting: true });
  s.defer('close a file', () => ran.push('close'));
  s.defer('destroy the domain', () => ran.push('destroy'), { lasting: true });
  s.defer('close QMP', () => ran.push('qmp'));
  await s.release();
  t.same(ran, ['qmp', 'close']);
  await s.close();
  t.same(ran, ['qmp', 'close'], 'a later close() has nothing left to run');
});
