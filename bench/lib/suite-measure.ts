/**
 * The suite bench's measurements, one run each: the fully local VM (the
 * reply every run must match, and the floor's local resumes made inside the
 * rounds), a synthesis's sample, the remote install (the base resumed and
 * the app's packages installed over the link from a repository served in
 * the namespace), and a cell's summary.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SynthesizeResult } from '../../lib/client/client.js';
import { VmsynthError } from '../../lib/core/errors.js';
import { abortReason, type Scope } from '../../lib/core/scope.js';
import { GUEST_INPUT, GUEST_SERVER, installScript, serverSource } from '../../lib/guest/apps.js';
import type { AptRepo } from '../../lib/guest/apt-repo.js';
import { applyOverlay } from '../../lib/offline/apply.js';
import { agentExec, agentPut } from '../../lib/vm/agent.js';
import { resumeBase } from '../../lib/vm/base-resume.js';
import { guestRequest } from '../../lib/vm/guest-app.js';
import type { BenchKey } from './bench-key.js';
import type { Netns } from './link.js';
import { percentile, round } from './stats.js';
import { BASE_NAME, INSTALL_TIMEOUT_MS, type PreparedApp } from './suite-app.js';
import type { CellSummary, Sample } from './suite-report.js';

const SERVE_REPO = fileURLToPath(new URL('./serve-repo.js', import.meta.url));
const progress = (msg: string) => process.stderr.write(`suite: ${msg}\n`);

export interface Cell {
  samples: Sample[];
  failures: string[];
}

/** A reply body equals the local VM's when both parse to the same JSON. */
function sameReply(a: string, expected: string): boolean {
  try {
    return JSON.stringify(JSON.parse(a)) === JSON.stringify(JSON.parse(expected));
  } catch {
    return false;
  }
}

export interface Local {
  /** The fully synthesized launch VM's images (removed with the run's temporary directory). */
  launch: string;
  /** The reply every run must match: the local VM's answer to the app's request. */
  reply: string;
  /** First responses of the local resumes made in the rounds, per link name. */
  byLink: Map<string, number[]>;
  /** The reference resume's first response (the floor's fallback when a link has no round of its own). */
  referenceMs: number;
}

/** The launch VM fully local (applied, then resumed once): the reply every run must match, and the images the rounds resume. */
export async function prepareLocal(app: PreparedApp, tmp: string, key: BenchKey, signal: AbortSignal): Promise<Local> {
  const launch = path.join(tmp, `launch-${app.spec.name}`);
  await applyOverlay({ overlay: app.profiled.dir, out: launch, trust: [key.pubFile], verifyBase: false, signal });
  const r = await resumeBase({ base: launch, verify: false, request: app.request, timeoutMs: 600_000, signal });
  progress(`${app.spec.name}: local resume (reference): first response ${r.firstResponseMs} ms`);
  return { launch, reply: JSON.stringify(r.reply), byLink: new Map(), referenceMs: r.firstResponseMs };
}

/**
 * One local resume, the floor's VM part, made inside a round like the policies' runs, so it
 * sees the same host (measured before the rounds, it made early start look faster than the
 * floor when the host slowed down later). Its first response goes to `local.byLink`; a
 * failure is reported and left out.
 */
export async function localRound(
  app: PreparedApp,
  local: Local,
  link: string,
  label: string,
  signal: AbortSignal,
): Promise<void> {
  try {
    const r = await resumeBase({ base: local.launch, verify: false, request: app.request, timeoutMs: 600_000, signal });
    const runs = local.byLink.get(link) ?? [];
    runs.push(r.firstResponseMs);
    local.byLink.set(link, runs);
    progress(`${label}: local resume: first response ${r.firstResponseMs} ms`);
  } catch (err) {
    if (signal.aborted) throw abortReason(signal);
    progress(
      `${label}: local resume FAILED (the floor uses the others): ${err instanceof Error ? err.message : String(err)}`,
    );
  }
}

export function sampleOf(r: SynthesizeResult, local: Local): Sample {
  return {
    firstResponseMs: r.timeline.firstResponse!,
    resumedMs: r.timeline.resumed,
    finishedMs: r.timeline.finished,
    bytesBeforeFirstResponse: r.bytesSentBeforeFirstResponse,
    demandRequests: r.demandRequests,
    outOfOrder: typeof r.serverStats.outOfOrder === 'number' ? r.serverStats.outOfOrder : null,
    hurried: r.hurried,
    replyMatchesLocal: r.firstResponse.status === 200 && sameReply(r.firstResponse.body, local.reply),
  };
}

/** The base resumed, the app's packages installed over the link, the server started and its first answer in. */
export async function remoteInstall(
  app: PreparedApp,
  repoUrl: string | null,
  local: Local,
  signal: AbortSignal,
): Promise<Sample> {
  const t0 = performance.now();
  let installMs = 0;
  let resumedMs = 0;
  let firstResponseMs = 0;
  let body = '';
  await resumeBase({
    base: BASE_NAME,
    verify: false,
    agent: true,
    timeoutMs: 120_000,
    signal,
    whileRunning: async ({ agentPort, hostPort }) => {
      resumedMs = performance.now() - t0;
      await agentPut(agentPort!, GUEST_SERVER, await fsp.readFile(serverSource()), 0o755, 60_000, signal);
      await agentPut(agentPort!, GUEST_INPUT, app.request.body!, 0o644, 60_000, signal);
      const r = await agentExec(
        agentPort!,
        installScript(app.spec, repoUrl, { trim: false }),
        INSTALL_TIMEOUT_MS,
        signal,
      );
      if (r.status !== 0)
        throw new VmsynthError(
          'VMS_CUSTOMIZE_FAILED',
          `remote install of ${app.spec.name} failed (${r.status}): ${r.output.slice(-1500)}`,
        );
      // The script's warm-up request is the app's first answer.
      firstResponseMs = performance.now() - t0;
      installMs = firstResponseMs - resumedMs;
      const reply = await guestRequest(hostPort, 'POST', app.request.path, 600_000, app.request.body, signal);
      body = reply.status === 200 ? reply.body.toString('utf8') : '';
    },
  });
  return {
    firstResponseMs: Math.round(firstResponseMs),
    resumedMs: Math.round(resumedMs),
    finishedMs: null,
    bytesBeforeFirstResponse: app.repo.bytes,
    demandRequests: null,
    replyMatchesLocal: sameReply(body, local.reply),
    installMs: Math.round(installMs),
  };
}

/** The app's repository served inside the namespace by a child process; resolves to its port. */
export async function serveRepoInNs(scope: Scope, n: Netns, repo: AptRepo): Promise<number> {
  const child: ChildProcess = spawn('ip', ['netns', 'exec', n.ns, process.execPath, SERVE_REPO, repo.dir, n.nsAddr], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  scope.defer(`stop the repository server (pid ${child.pid})`, async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  });
  return new Promise((resolve, reject) => {
    let text = '';
    child.stdout!.on('data', (c: Buffer) => {
      text += c.toString('utf8');
      const m = /"port":(\d+)/.exec(text);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) =>
      reject(new VmsynthError('VMS_INTERNAL', `the repository server in ${n.ns} exited (${code}) before listening`)),
    );
  });
}

export function summarize(c: Cell): CellSummary {
  const xs = c.samples.map((s) => s.firstResponseMs);
  const mean = xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
  return {
    n: xs.length,
    failures: c.failures.length,
    firstResponseMs: {
      p50: round(percentile(xs, 0.5)),
      p90: round(percentile(xs, 0.9)),
      min: xs.length ? Math.min(...xs) : null,
      max: xs.length ? Math.max(...xs) : null,
      mean: round(mean),
    },
    bytesBeforeFirstResponse: round(
      percentile(
        c.samples.flatMap((s) => (s.bytesBeforeFirstResponse === null ? [] : [s.bytesBeforeFirstResponse])),
        0.5,
      ),
    ),
    resumedMs: round(
      percentile(
        c.samples.flatMap((s) => (s.resumedMs === null ? [] : [s.resumedMs])),
        0.5,
      ),
    ),
    repliesMatchingLocal: c.samples.filter((s) => s.replyMatchesLocal).length,
  };
}
