/**
 * The live session view in a real browser (Debian's chromium, driven by
 * playwright-core): the ops endpoint with the view hung on it, beside a
 * real server. Two syntheses of the test guest run while the page is open;
 * each appears as a card with its segments (the count the server applied),
 * a uPlot chart, its first response, and, once finished, ended. The view
 * needs its token. LIVE_VIEW_SCREENSHOT=FILE saves a screenshot (how
 * docs/live-view.png is made).
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ClientSession } from '../../lib/client/session.js';
import { channels } from '../../lib/core/diagnostics.js';
import { packageRoot } from '../../lib/core/paths.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { HealthEndpoint } from '../../lib/server/health-http.js';
import { ServerMetrics } from '../../lib/server/metrics.js';
import { SynthServer } from '../../lib/server/server.js';
import { SessionView } from '../../lib/web/session-view.js';
import { guestBase } from '../helpers/guest-base.js';

t.teardown(removeTestRoot);
await guestBase('viewbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
const script = `${demo}\ndd if=/dev/urandom of=/dev/vda bs=1M seek=8 count=12 conv=fsync 2>/dev/null\necho data written\n`;
await createOverlay({ base: 'viewbase', out: ov, script, segmentBytes: 256 << 10 });

const token = 'a-view-token-for-tests';
const view = new SessionView({ tokenSha256: createHash('sha256').update(token).digest('hex'), open: true });
const metrics = new ServerMetrics();
const endpoint = await HealthEndpoint.listen('127.0.0.1', 0, metrics, { notReady: async () => null }, (...a) =>
  view.handle(...a),
);
const server = await SynthServer.listen({ port: 0 });
t.teardown(async () => {
  await server.close();
  await endpoint.close();
  view.close();
  metrics.close();
});
const ops = `http://127.0.0.1:${endpoint.address().port}`;
const applied = new Map<string, number>();
const onApplied = (m: unknown) => {
  const s = (m as { session: string }).session;
  applied.set(s, (applied.get(s) ?? 0) + 1);
};
channels.segmentApplied.subscribe(onApplied);
t.teardown(() => channels.segmentApplied.unsubscribe(onApplied));

t.test('the view needs its token', async (t) => {
  t.equal((await fetch(`${ops}/sessions`)).status, 401, 'no token: 401');
  t.equal((await fetch(`${ops}/sessions?token=wrong`)).status, 401, 'a wrong token: 401');
  const ok = await fetch(`${ops}/sessions`, { headers: { authorization: `Bearer ${token}` } });
  t.equal(ok.status, 200, 'a bearer token: the page');
  t.match(await ok.text(), /<title>vmsynth: sessions<\/title>/);
  t.equal((await fetch(`${ops}/sessions/uplot.js`)).status, 200, "the chart library's file is public");
  t.equal((await fetch(`${ops}/metrics`)).status, 200, 'the endpoint still serves /metrics');
});

t.test('live syntheses appear in the browser with their segments, chart and first response', async (t) => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${ops}/sessions?token=${token}`);
  await page.waitForFunction(`document.getElementById('status').textContent.includes('live session')`);

  const server0 = `127.0.0.1:${server.address().port}`;
  const request = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };
  const sessions: ClientSession[] = [];
  for (const policy of ['early-start', 'demand-only'] as const) {
    const s = await ClientSession.open({ server: server0, overlay: ov, policy });
    sessions.push(s);
    const r = await s.offload(request);
    t.equal(r.status, 200, `${policy}: the app answered`);
  }
  await sessions[0]!.complete;
  for (const s of sessions) {
    const card = page.locator(`#s-${s.id}`);
    await card.waitFor();
    const n = applied.get(s.id) ?? -1;
    await page.waitForFunction(`document.getElementById('s-${s.id}')?.dataset.segments === '${n}'`, undefined, {
      timeout: 10_000,
    });
    t.pass(`session ${s.id}: its card shows the ${applied.get(s.id)} segments the server applied`);
    // The first response is a later event than the segments it needed: wait for it too.
    await page.waitForFunction(
      `/first response \\d/.test(document.querySelector('#s-${s.id} .first')?.textContent ?? '')`,
      undefined,
      { timeout: 10_000 },
    );
    t.match(await card.locator('.first').textContent(), /first response \d/, 'with its first response');
    t.equal(await card.locator('.uplot canvas').count(), 1, 'and a uPlot chart');
    t.match(await card.locator('.head').textContent(), /VM running/, 'the VM runs');
  }
  const shot = process.env.LIVE_VIEW_SCREENSHOT;
  if (shot) await page.screenshot({ path: path.resolve(packageRoot(), shot), fullPage: true });

  for (const s of sessions) await s.finish();
  for (const s of sessions)
    await page.waitForFunction(`document.getElementById('s-${s.id}')?.dataset.state === 'ended'`, undefined, {
      timeout: 10_000,
    });
  t.pass('finished sessions show as ended');
  t.same(errors, [], 'no script errors on the page');
});
