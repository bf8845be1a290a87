/**
 * Early-start synthesis end to end on the real stack over loopback: a real
 * customization of the test guest becomes an overlay, `vmsynth serve`'s
 * server resumes the VM before the overlay has arrived, the client's first
 * offload request is answered through the app in the VM, and the launch
 * images equal base + overlay. The link is slowed by the client's pacing,
 * and early start's background stream stalls after its first 3 MB until the
 * first response: on a loaded host (CI runs two VM tests at once) resuming
 * took 7 s, as long as the whole overlay took to send, so without the stall
 * "before the overlay arrived" would depend on the host's speed. With it, the
 * first request's reads past those 3 MB can only be served on demand.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { drained, until } from '../helpers/wait.js';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { synthesize, type SynthesizeOptions } from '../../lib/client/client.js';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { appDigest, hex64 } from '../../lib/guest/patterns.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { SynthServer } from '../../lib/server/server.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';
import { guestBase } from '../helpers/guest-base.js';
import { ageSnapshot, CLOCK_TOLERANCE_MS, guestClockOffset } from '../helpers/guest-clock.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';

const run = promisify(execFile);
t.teardown(removeTestRoot);

await guestBase('synthbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const custom = path.join(testRoot, 'custom');
// The example customization, plus 12 MiB of new data at 8 MiB on the disk:
// in the default order it streams before the 4 MiB at 40 MiB that the first
// request reads, so early start must fetch that on demand.
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
const script = `${demo}\ndd if=/dev/urandom of=/dev/vda bs=1M seek=8 count=12 conv=fsync 2>/dev/null\necho data written\n`;
await createOverlay({ base: 'synthbase', out: ov, script, keepCustom: custom });
const overlayMade = Date.now(); // the custom VM was saved before this
const customDisk = await fsp.readFile(path.join(custom, 'disk.raw'));
const installedDigest = hex64(appDigest(customDisk.subarray(40 << 20, 44 << 20)));

const server = await SynthServer.listen({ port: 0 });
t.teardown(() => server.close());
const addr = server.address();
const request = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };
const synth = (o: Partial<SynthesizeOptions>) =>
  synthesize({ server: `${addr.host}:${addr.port}`, overlay: ov, request, timeoutMs: 300_000, ...o });

async function sha256sum(file: string): Promise<string> {
  const { stdout } = await run('sha256sum', [file]);
  return stdout.split(' ')[0]!;
}
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

t.test(
  "early start answers the first request before the overlay has arrived, with the synthesized VM's bytes",
  async (t) => {
    let images: { memory: string; disk: string } | null = null;
    let clockOffset = NaN;
    await ageSnapshot(overlayMade, 5000);
    const r = await synth({
      policy: 'early-start',
      maxBytesPerSecond: 2_000_000, // 16 Mbit/s
      holdBackgroundAfterBytes: 3_000_000,
      whileRunning: async ({ session, offload }) => {
        const mnt = path.join(runDir(), session, 'mnt');
        images = {
          memory: await sha256sum(path.join(mnt, 'memory.img')),
          disk: await sha256sum(path.join(mnt, 'disk.img')),
        };
        clockOffset = await guestClockOffset(async () => (await offload({ method: 'GET', path: '/info' })).body);
      },
    });
    const tl = r.timeline;
    t.ok(
      tl.resumed! < tl.overlayComplete!,
      `the VM resumed (${tl.resumed} ms) before the overlay was complete (${tl.overlayComplete} ms)`,
    );
    t.ok(
      tl.firstResponse! < tl.overlayComplete!,
      `the first response (${tl.firstResponse} ms) came before the overlay was complete`,
    );
    t.ok(
      r.bytesSentBeforeFirstResponse < r.overlayBytes,
      `${r.bytesSentBeforeFirstResponse} of ${r.overlayBytes} bytes were sent before it`,
    );
    const backgroundBefore = r.sends
      .filter((x) => x.lane === 'background' && x.ms < tl.firstResponse!)
      .reduce((n, x) => n + x.bytes, 0);
    t.ok(
      backgroundBefore < 3_000_000 + Math.max(...r.sends.map((x) => x.bytes)),
      `the background stream stalled after its first 3 MB (${backgroundBefore} bytes went before the first response)`,
    );
    t.equal(r.firstResponse.status, 200);
    t.equal(
      JSON.parse(r.firstResponse.body).diskDigest,
      installedDigest,
      "the app read the customization's disk bytes",
    );
    t.ok(
      r.demandRequests > 0,
      `the guest's reads were fetched on demand (${r.demandRequests} requests; ${r.hurried} background segments hurried)`,
    );
    const s = r.serverStats as { blockedReads: { count: number }; demandFetches: number; segmentsReceived: number };
    t.ok(
      s.blockedReads.count > 0 && s.demandFetches === r.demandRequests,
      'the server counted the blocked reads and demand fetches',
    );
    t.equal(s.segmentsReceived, r.segments, 'every segment arrived once');
    t.same(
      images,
      {
        memory: sha(await fsp.readFile(path.join(custom, 'memory.raw'))),
        disk: sha(customDisk),
      },
      'the launch images equal base + overlay',
    );
    t.ok(
      Math.abs(clockOffset) <= CLOCK_TOLERANCE_MS,
      `the synthesized VM's clock is the host's to within the RTC's half second, not its snapshot's 5 s or more ago (off by ${Math.round(clockOffset)} ms)`,
    );
    t.same(await leaks([`${DOMAIN_PREFIX}${r.session}`], runDir()), NO_LEAKS, 'the session is gone after finish');
  },
);

/** What one synthesized VM says of its identity, while it runs. */
interface Identity {
  genid: string;
  xmlGenid: string | null;
  guest: { random: string; vmForks: number };
}

async function identityOf(
  session: string,
  offload: (r: { method: 'GET'; path: string }) => Promise<{ body: Buffer | string }>,
): Promise<Identity> {
  const domain = `${DOMAIN_PREFIX}${session}`;
  const info = async () =>
    JSON.parse((await offload({ method: 'GET', path: '/info' })).body.toString()) as {
      random: string;
      vmForks: number;
    };
  // The base booted (no fork), the customization resumed it (one), this synthesis resumed that (two):
  // wait until the guest kernel has logged its own, so its RNG has been reseeded.
  let guest = await info();
  await until(async () => (guest = await info()).vmForks >= 2, 'the guest kernel to log the VM fork', 60_000, 100);
  const qmp = (
    await run('virsh', ['qemu-monitor-command', domain, JSON.stringify({ execute: 'query-vm-generation-id' })])
  ).stdout;
  return {
    genid: (JSON.parse(qmp) as { return: { guid: string } }).return.guid,
    xmlGenid: /<genid>([^<]+)<\/genid>/.exec((await run('virsh', ['dumpxml', domain])).stdout)?.[1] ?? null,
    guest,
  };
}

t.test(
  'two syntheses of one overlay are not clones: each has its own generation ID, and its RNG reseeded',
  async (t) => {
    const ids: Identity[] = [];
    for (let i = 0; i < 2; i++) {
      await synth({
        policy: 'early-start',
        whileRunning: async ({ session, offload }) => {
          ids.push(await identityOf(session, offload));
        },
      });
    }
    const [a, b] = ids as [Identity, Identity];
    t.not(a.genid, b.genid, 'QEMU reports a different VM generation ID for each');
    t.equal(a.xmlGenid, a.genid, "it is the domain's <genid>, so `virsh dumpxml` shows it");
    t.same([a.guest.vmForks, b.guest.vmForks], [2, 2], 'each guest kernel saw its synthesis as a new generation');
    t.match(a.guest.random, /^[0-9a-f]{32}$/);
    t.not(
      a.guest.random,
      b.guest.random,
      "the guests' RNGs give different bytes (the same snapshot without a new generation ID gives the same ones)",
    );
  },
);

t.test('baseline resumes only after the whole overlay is applied', async (t) => {
  const r = await synth({ policy: 'baseline', maxBytesPerSecond: 8_000_000 });
  t.ok(r.timeline.overlayComplete! < r.timeline.resumed!, 'complete before resumed');
  t.equal(r.bytesSentBeforeFirstResponse, r.overlayBytes, 'the whole overlay went before the first response');
  t.equal(r.demandRequests, 0);
  t.equal(JSON.parse(r.firstResponse.body).diskDigest, installedDigest);
  t.same(await leaks([`${DOMAIN_PREFIX}${r.session}`], runDir()), NO_LEAKS);
});

t.test('demand-only fetches only what the guest reads', async (t) => {
  const r = await synth({ policy: 'demand-only' });
  t.ok(r.segmentsSent < r.segments, `${r.segmentsSent} of ${r.segments} segments were needed`);
  t.equal(r.segmentsSent, r.demandRequests, 'every segment sent was a demand');
  t.equal(r.timeline.overlayComplete, null);
  t.equal(JSON.parse(r.firstResponse.body).diskDigest, installedDigest);
  t.same(await leaks([`${DOMAIN_PREFIX}${r.session}`], runDir()), NO_LEAKS);
});

t.test('a segment that fails its hash is asked for again once; twice fails the session', async (t) => {
  const flip = (data: Buffer) => {
    const b = Buffer.from(data);
    b[b.length >> 1]! ^= 0x01;
    return b;
  };
  const once = await synth({ tamper: (i, d, attempt) => (i === 2 && attempt === 1 ? flip(d) : d) });
  t.equal((once.serverStats as { retries: number }).retries, 1, 'retried once and the session went on');
  t.equal(JSON.parse(once.firstResponse.body).diskDigest, installedDigest);
  let session = '';
  await t.rejects(
    synth({
      tamper: (i, d) => (i === 2 ? flip(d) : d),
      onEvent: (e) => {
        if (e.type === 'accepted') session = e.session;
      },
    }),
    { code: 'VMS_OVERLAY_CORRUPT' },
  );
  await drained(server);
  t.same(await leaks([`${DOMAIN_PREFIX}${session}`], runDir()), NO_LEAKS, 'the failed session left nothing');
});
