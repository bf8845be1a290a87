/**
 * Sessions that outlive their connection, on the real stack (QEMU through
 * libvirt, FUSE, the server and client libraries): the link between client
 * and server dies with real resets (test/helpers/flaky-link.ts) and the
 * client resumes its session over a new connection.
 *
 * Drops at 10%, 50% and 90% of the segment bytes, during a held guest read,
 * and while an offload request is in flight; a resume from another source
 * address; a storm of 100 drops in one session. For each: the session
 * completes with the synthesized VM's bytes; the first request's reply
 * arrives once and the server forwarded the request to the app once; no
 * segment the server received is sent again; nothing is left behind.
 * Then: a stolen session id without its secret is refused and the session
 * goes on; a client that stays away past the grace period finds its session
 * gone, and the session's VM, mount and files are gone too.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { synthesize, type SynthesizeOptions, type SynthesizeResult } from '../../lib/client/client.js';
import { channels } from '../../lib/core/diagnostics.js';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { appDigest, hex64 } from '../../lib/guest/patterns.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { encodeFrame, FrameDecoder } from '../../lib/protocol/frames.js';
import { PROTOCOL } from '../../lib/protocol/messages.js';
import { SynthServer } from '../../lib/server/server.js';
import { cleanStale } from '../../lib/vm/janitor.js';
import { DOMAIN_PREFIX, Libvirt } from '../../lib/vm/libvirt.js';
import { FlakyLink } from '../../bench/lib/flaky-link.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';
import { drained } from '../helpers/wait.js';

t.teardown(removeTestRoot);
await guestBase('rsmbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const custom = path.join(testRoot, 'custom');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'rsmbase', out: ov, script: demo, keepCustom: custom, segmentBytes: 256 << 10 });
const installed = hex64(appDigest((await fsp.readFile(path.join(custom, 'disk.raw'))).subarray(40 << 20, 44 << 20)));
await fsp.rm(custom, { recursive: true, force: true });
const overlayBytes = (await Overlay.open(ov, { trusted: null })).segmentsBytes;

const server = await SynthServer.listen({ port: 0, graceMs: 30_000, keepaliveMs: 1000, idleMs: 5000 });
t.teardown(() => server.close());
const upstream = server.address();
const request = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };

/** Offload requests the server forwarded to the app in a VM, by session. */
const forwarded = new Map<string, number>();
const onRun = (m: unknown) => {
  const s = (m as { session: string }).session;
  forwarded.set(s, (forwarded.get(s) ?? 0) + 1);
};
channels.offloadForwarded.subscribe(onRun);
t.teardown(() => channels.offloadForwarded.unsubscribe(onRun));

interface Trial {
  result: SynthesizeResult;
  link: FlakyLink;
}

/** One synthesis through a flaky link that `drop` cuts, resuming from 127.0.0.2 after the first drop. */
async function trial(drop: (link: FlakyLink) => unknown, o: Partial<SynthesizeOptions> = {}): Promise<Trial> {
  const link = await FlakyLink.open(upstream, ['127.0.0.1', '127.0.0.2']);
  try {
    void drop(link);
    const result = await synthesize({ server: link.address, overlay: ov, request, timeoutMs: 300_000, ...o });
    return { result, link };
  } finally {
    link.close();
  }
}

/** What every resumed session must show. */
async function survived(t: Test, { result: r, link }: Trial, drops: number): Promise<void> {
  t.equal(r.firstResponse.status, 200, 'the first request was answered');
  t.equal(JSON.parse(r.firstResponse.body).diskDigest, installed, "with the synthesized VM's disk bytes");
  t.equal(r.reconnects.length, drops, `the client resumed ${drops} time(s)`);
  t.match(r.serverStats, { resumes: drops, retries: 0 }, 'the server agrees');
  // No byte the server received was thrown away: a segment cut by a drop was resumed from where
  // the server's part of it ended, and one it had whole was never asked for again.
  t.match(r.serverStats, { segmentBytesDiscarded: 0 }, 'no segment byte the server received was sent again');
  // Each segment reached the server once: one it had received whole was never sent again (a copy
  // would have been refused as not asked for, and ended the session). Segments cut by a drop were.
  const stats = r.serverStats as { segmentsReceived: number; bytesReceived: number };
  if (r.policy === 'demand-only')
    t.ok(
      stats.segmentsReceived <= r.segments && stats.bytesReceived <= r.overlayBytes,
      `the server received ${stats.segmentsReceived} of ${r.segments} segments, none twice`,
    );
  else
    t.match(
      stats,
      { segmentsReceived: r.segments, bytesReceived: r.overlayBytes },
      'the server received each segment once',
    );
  t.equal(forwarded.get(r.session), 1, 'the server forwarded the first request to the app once');
  t.ok((link.offloadsForwarded.get(1) ?? 0) >= 1, 'the request went through the link');
  await drained(server);
  t.same(await leaks([`${DOMAIN_PREFIX}${r.session}`], runDir()), NO_LEAKS, 'nothing left behind');
}

/** Trials of each drop point (the drop lands in a different state of the VM and the stream each time). */
const TRIALS = Number(process.env.RESUME_TRIALS ?? 3);

for (const point of [0.1, 0.5, 0.9]) {
  for (let n = 1; n <= TRIALS; n++)
    t.test(`a drop at ${point * 100}% of the segment bytes (${n}/${TRIALS})`, async (t) => {
      const tr = await trial((link) => link.cutAtSegmentBytes(Math.round(overlayBytes * point), 100 * n), {
        maxBytesPerSecond: 2_000_000 * n,
      });
      t.ok(tr.link.segmentBytes >= Math.round(overlayBytes * point), 'the link died at that point');
      await survived(t, tr, 1);
      t.not(tr.link.sources[0], tr.link.sources[1], 'and it came back from another source address');
    });
}

for (let n = 1; n <= TRIALS; n++)
  t.test(`a drop while a guest read waits for its segment (${n}/${TRIALS})`, async (t) => {
    // demand-only: every segment is fetched for a guest read that is held until it lands.
    const tr = await trial((link) => link.cutOnServerFrame((h) => h.type === 'want' && h.lane === 'demand'), {
      policy: 'demand-only',
    });
    await survived(t, tr, 1);
    t.ok(tr.result.demandRequests >= 1, 'the held read was served after the resume');
  });

for (let n = 1; n <= TRIALS; n++)
  t.test(
    `a drop while the first request is in flight: its reply is kept and sent again (${n}/${TRIALS})`,
    async (t) => {
      const tr = await trial((link) => link.cutOnServerFrame((h) => h.type === 'reply'));
      await survived(t, tr, 1);
      const replies = tr.link.s2c.filter((f) => f.type === 'reply');
      t.equal(replies.length, 1, 'the client got the reply once, after the resume');
      t.equal(replies[0]!.conn, 1, 'on the second connection');
    },
  );

t.test('a storm: 100 drops in one session', async (t) => {
  const tr = await trial(
    async (link) => {
      for (let i = 0; i < 100; i++) {
        // Each drop after the session was resumed on the connection before.
        while (!link.s2c.some((f) => f.conn === i && (f.type === 'accepted' || f.type === 'resumed')))
          await new Promise((r) => setTimeout(r, 5));
        link.cut();
      }
    },
    { policy: 'early-start', maxBytesPerSecond: 2_000_000 },
  );
  await survived(t, tr, 100);
});

t.test('a stolen session id without its secret is refused; the session goes on', async (t) => {
  let stolen: Promise<Record<string, unknown>> | null = null;
  const r = await synthesize({
    server: `${upstream.host}:${upstream.port}`,
    overlay: ov,
    request,
    onEvent: (e) => {
      if (e.type === 'accepted') stolen = resumeWith(e.session, randomBytes(32));
    },
  });
  t.match(await stolen!, { type: 'error', code: 'VMS_AUTH', fatal: true }, 'the thief is refused');
  t.equal(r.firstResponse.status, 200, 'the owner finished its session');
  t.equal(r.reconnects.length, 0);
});

t.test('a client away past the grace period: its session ended, and left nothing', async (t) => {
  const short = await SynthServer.listen({ port: 0, graceMs: 1500, keepaliveMs: 500, idleMs: 2000 });
  t.teardown(() => short.close());
  const link = await FlakyLink.open(short.address());
  t.teardown(() => link.close());
  let session = '';
  const ended = new Promise<{ error?: unknown }>((resolve) => {
    const on = (m: unknown) => {
      if ((m as { session: string }).session !== session) return;
      channels.sessionEnded.unsubscribe(on);
      resolve(m as { error?: unknown });
    };
    channels.sessionEnded.subscribe(on);
  });
  void link.cutOnServerFrame((h) => h.type === 'ready', 6000); // down longer than the grace period
  await t.rejects(
    synthesize({
      server: link.address,
      overlay: ov,
      request,
      onEvent: (e) => {
        if (e.type === 'accepted') session = e.session;
      },
    }),
    { code: 'VMS_PEER_GONE', details: { reason: 'resume-failed', graceMs: 1500 } },
    'the client gives up when the grace period has passed',
  );
  t.match(await ended, { error: { code: 'VMS_PEER_GONE', details: { reason: 'grace-expired' } } });
  await drained(short);
  t.same(await leaks([`${DOMAIN_PREFIX}${session}`], runDir()), NO_LEAKS, 'VM, mount and files are gone');
  t.match(await resumeWith(session, randomBytes(32), short.address()), {
    type: 'error',
    code: 'VMS_SESSION_GONE',
  });
});

t.test('a SIGKILLed server: the client is told the server is gone, not that it tore the session down', async (t) => {
  const cli = path.join(packageRoot(), 'dist', 'lib', 'cli', 'entry.cjs');
  // Without keepers: with them, the VM outlives the server and the client waits its grace period out
  // for a restarted one (test/e2e/restart.test.ts).
  const child = spawn(process.execPath, [cli, 'serve', '--listen', '127.0.0.1:0', '--json'], {
    env: { ...process.env, VMSYNTH_KEEP_SESSIONS: 'false' },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const addr = await new Promise<{ host: string; port: number }>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.includes('"listening"'));
      if (line) resolve((JSON.parse(line) as { listening: { host: string; port: number } }).listening);
    });
    child.once('exit', () => reject(new Error(`serve exited early: ${out}`)));
  });
  let session = '';
  let killedAt = 0;
  const outcome = synthesize({
    server: `${addr.host}:${addr.port}`,
    overlay: ov,
    request,
    maxBytesPerSecond: 2_000_000,
    onEvent: (e) => {
      if (e.type === 'accepted') session = e.session;
      if (e.type === 'timeline' && e.step === 'resumed') {
        child.kill('SIGKILL');
        killedAt = performance.now();
      }
    },
  });
  await t.rejects(outcome, { code: 'VMS_PEER_GONE', details: { reason: 'server-gone' } }, 'the server is gone');
  const ms = performance.now() - killedAt;
  t.ok(ms < 20_000, `told ${Math.round(ms)} ms after the kill (it refused connections for 10 s)`);
  await outcome.catch((e: Error) => t.match(e.message, /stopped or crashed/, 'and the message says so'));
  // What the killed server left: its janitor's job at the next start; here, ours.
  const lv = await Libvirt.connect();
  t.teardown(() => lv.close());
  await cleanStale(lv);
  t.same(await leaks([`${DOMAIN_PREFIX}${session}`], runDir()), NO_LEAKS, 'nothing left after the janitor');
});

/** A raw client that says hello and resumes `session` with `secret`; resolves with the server's answer. */
function resumeWith(session: string, secret: Buffer, to = upstream): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const s = net.connect(to.port, to.host);
    const dec = new FrameDecoder();
    s.on('error', reject);
    s.on('data', (d: Buffer) => {
      for (const f of dec.push(d)) {
        if (f.header.type === 'welcome') continue;
        s.destroy();
        resolve(f.header);
      }
    });
    s.write(Buffer.concat(encodeFrame({ type: 'hello', protocol: PROTOCOL, client: 'thief' })));
    s.write(Buffer.concat(encodeFrame({ type: 'resume', session, secret })));
  });
}
