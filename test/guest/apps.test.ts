/**
 * The apps' install script: what it asks of the guest, per app.
 */
import t from 'tap';
import { APP_NAMES, APPS, GUEST_INPUT, GUEST_SERVER, installScript } from '../../lib/guest/apps.js';

t.test('an app with packages installs them from the given repository only', async (t) => {
  const s = installScript(APPS.speech, 'http://10.0.2.2:1234');
  t.match(s, /^set -e\n/, 'stops at the first failure');
  t.match(s, /echo 'deb \[trusted=yes\] http:\/\/10\.0\.2\.2:1234 \.\/' > \/etc\/apt\/sources\.list\.d\/vmsynth-app\.list/);
  t.match(s, /Acquire::Check-Date=false/, "apt does not judge the repository by the resumed VM's stale clock");
  t.match(s, /apt-get -q -y --no-install-recommends install python3-pocketsphinx pocketsphinx-en-us\n/);
  t.match(s, /apt-get clean\nrm -rf \/var\/lib\/apt\/lists\/\*/, "apt's downloads and lists do not stay in the overlay");
  t.match(s, new RegExp(`exec python3 ${GUEST_SERVER} speech --port 8000`), 'the server becomes the guest app');
  t.match(s, /kill "\$\(cat \/run\/vmsynth-app\.pid\)"/, 'the placeholder app is stopped');
  t.match(s, new RegExp(`open\\('${GUEST_INPUT}', 'rb'\\)`), 'the warm-up request sends the input');
  t.match(s, /fstrim -v \//, 'freed blocks are trimmed');
  t.notMatch(installScript(APPS.speech, 'http://x', { trim: false }), /fstrim/, 'no trim when asked not to');
});

t.test('an app without packages touches no apt; one with packages needs a repository', async (t) => {
  t.notMatch(installScript(APPS.compute, null), /apt-get/);
  t.throws(() => installScript(APPS.ocr, null), { code: 'VMS_INTERNAL', details: { app: 'ocr', reason: 'no-repository' } });
  for (const name of APP_NAMES) t.equal(APPS[name].name, name, `${name}: its spec is named after it`);
  t.ok(APPS.face.packages.includes('opencv-data') && APPS.ocr.packages.includes('tesseract-ocr-eng'), 'the packages the issue names');
});
