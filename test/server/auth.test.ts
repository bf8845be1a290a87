/**
 * Admission rules without a network: token authentication by SHA-256 and
 * the per-address connection rate over a sliding minute (fake clock).
 */
import t from 'tap';
import { tokenSha256 } from '../../lib/core/config.js';
import { Authenticator, newToken, RateLimiter } from '../../lib/server/auth.js';

t.test('tokens name their client; a missing or wrong token is VMS_AUTH', async (t) => {
  const a = newToken();
  const b = newToken();
  t.not(a, b);
  t.ok(a.length >= 43, '256 random bits');
  const auth = new Authenticator([
    { name: 'phone-a', tokenSha256: tokenSha256(a) },
    { name: 'phone-b', tokenSha256: tokenSha256(b) },
  ]);
  t.ok(auth.required);
  t.equal(auth.authenticate(a), 'phone-a');
  t.equal(auth.authenticate(b), 'phone-b');
  t.throws(() => auth.authenticate(undefined), { code: 'VMS_AUTH', details: { reason: 'missing' } });
  t.throws(() => auth.authenticate(`${a}x`), { code: 'VMS_AUTH', details: { reason: 'invalid' } });
  t.throws(
    () => auth.authenticate(tokenSha256(a)),
    { code: 'VMS_AUTH', details: { reason: 'invalid' } },
    'the stored digest is not itself a token',
  );
  const open = new Authenticator([]);
  t.notOk(open.required);
  t.equal(open.authenticate(undefined), 'anonymous', 'no clients configured: no authentication');
});

t.test('the rate limit counts connection starts per address over a sliding minute', async (t) => {
  let now = 1_000_000;
  const r = new RateLimiter(3, () => now);
  t.same([r.admit('a'), r.admit('a'), r.admit('a')], [true, true, true]);
  t.equal(r.admit('a'), false, 'the fourth within a minute is refused');
  t.equal(r.admit('b'), true, 'another address has its own budget');
  now += 30_000;
  t.equal(r.admit('a'), false, 'refused attempts do not extend the window, but it has not passed yet');
  now += 30_001;
  t.equal(r.admit('a'), true, 'a minute after the first starts, room again');
  t.ok(r.size <= 2);
  for (let i = 0; i < 1000; i++) r.admit(`10.0.${i >> 8}.${i & 255}`);
  now += 120_000;
  r.admit('c');
  t.equal(r.size, 1, 'addresses idle for a minute are dropped: the table stays bounded');
});
