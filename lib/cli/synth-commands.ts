/**
 * `vmsynth synth`, the mobile client: a thin wrapper over lib/client.
 * (`vmsynth serve` is in serve-commands.ts.)
 */
import { promises as fsp } from 'node:fs';
import type { Command } from 'commander';
import { VmsynthError } from '../core/errors.js';
import type { ClientEvent, OffloadRequest, SynthesizeResult } from '../client/client.js';
import { POLICIES, type Policy } from '../protocol/messages.js';
import { bytes, ms, table } from './format.js';
import { progressBar, type Progress } from './progress.js';
import { positiveInt, runCommand } from './run.js';

/** The --policy option parser (exported for tests: an option parser's error never reaches --json output). */
export function parsePolicy(v: string): Policy {
  if (!(POLICIES as readonly string[]).includes(v)) {
    throw new VmsynthError('VMS_USAGE', `--policy must be one of ${POLICIES.join(', ')}, got "${v}"`, {
      details: { flag: '--policy', value: v, allowed: POLICIES },
    });
  }
  return v as Policy;
}

/** The timeline and byte counts a person reads after `vmsynth synth`. */
export function synthLines(r: SynthesizeResult): string {
  const t = r.timeline;
  const at = (v: number | null) => (v === null ? '—' : ms(v));
  return table([
    ['connected', at(t.connected)],
    ['manifest accepted', at(t.accepted)],
    ['VM resumed', at(t.resumed)],
    ['first response', `${at(t.firstResponse)}  (HTTP ${r.firstResponse.status})`],
    ['overlay complete', at(t.overlayComplete)],
    ['torn down', at(t.finished)],
    [
      'sent before first response',
      `${bytes(r.bytesSentBeforeFirstResponse)} of ${bytes(r.overlayBytes)} (${r.segmentsSentBeforeFirstResponse} of ${r.segments} segments)`,
    ],
    ['demand requests', String(r.demandRequests)],
    ['background segments hurried', String(r.hurried)],
    [
      'reconnects',
      r.reconnects.length === 0
        ? '0'
        : `${r.reconnects.length} (${ms(r.reconnects.reduce((a, x) => a + x.lostMs, 0))} without a connection; last: ${r.reconnects.at(-1)!.reason})`,
    ],
  ]);
}

/** The overlay's bytes sent, as a progress bar on a terminal; drops and resumes as lines above it. */
function sendProgress(enabled: boolean): { onEvent: (e: ClientEvent) => void; done: () => void } {
  let bar: Progress | null = null;
  const onEvent = (e: ClientEvent) => {
    if (e.type === 'dropped' || e.type === 'reconnected') {
      bar?.log(
        e.type === 'dropped'
          ? `connection lost (${e.reason}); reconnecting`
          : `session resumed after ${ms(e.lostMs)} (reconnect ${e.count})`,
      );
      return;
    }
    if (e.type !== 'segment') return;
    bar ??= progressBar({ label: 'overlay', total: e.overlayBytes, unit: 'bytes', enabled });
    bar.update(e.bytesSent, `${e.sent}/${e.total} segments (${e.lane})`);
  };
  return { onEvent, done: () => bar?.stop() };
}

export function registerSynthCommands(program: Command): void {
  program
    .command('synth')
    .description(
      'Synthesize an overlay on a server: stream it in the order the server asks, send the first offload request (the server runs it once the VM is up), resume the session after a dropped connection, print the timeline.',
    )
    .requiredOption('--server <host:port>', 'synthesis server')
    .requiredOption('--overlay <dir>', 'overlay directory')
    .option(
      '--overlay-url <s3url>',
      'the same overlay in an object store (s3://bucket/prefix, from `vmsynth overlay push`): the server fetches segments from there over its own link, and asks this client only for what it cannot get',
    )
    .option(
      '--no-lookaside',
      "send every segment whole: do not offer chunk lookaside (the server's store filling in chunks it holds)",
    )
    .option('--policy <p>', `${POLICIES.join(' | ')}`, parsePolicy, 'early-start' as Policy)
    .option('--path <path>', 'path of the first offload request', '/run')
    .option('--request <file>', 'body of the first offload request (sent as POST unless --method says otherwise)')
    .option('--method <m>', 'GET, POST or PUT (default GET, or POST with --request)')
    .option('--token <token>', 'client token, if the server requires one (or VMSYNTH_TOKEN)')
    .option('--tls', 'speak TLS, checking the server certificate against the system CAs')
    .option(
      '--tls-ca <file>',
      'speak TLS, checking the server certificate against this PEM (a cloudlet CA or self-signed certificate)',
    )
    .option('--tls-servername <name>', 'the name the server certificate must carry (default: the --server host)')
    .option(
      '--max-rate-mbit <n>',
      'pace segments to this many Mbit/s, to emulate a slower link (default: as fast as the link goes)',
      positiveInt('--max-rate-mbit'),
    )
    .option('--timeout <seconds>', 'limit for the whole session', positiveInt('--timeout'), 600)
    .option('--json', 'print the result as JSON')
    .action(
      async (o: {
        server: string;
        overlay: string;
        overlayUrl?: string;
        lookaside: boolean;
        policy: Policy;
        path: string;
        request?: string;
        method?: string;
        token?: string;
        tls?: boolean;
        tlsCa?: string;
        tlsServername?: string;
        maxRateMbit?: number;
        timeout: number;
        json?: boolean;
      }) =>
        runCommand(!!o.json, async ({ signal, json }) => {
          if (!o.path.startsWith('/'))
            throw new VmsynthError('VMS_USAGE', `--path must start with "/", got "${o.path}"`);
          const method = (o.method ?? (o.request ? 'POST' : 'GET')).toUpperCase();
          if (method !== 'GET' && method !== 'POST' && method !== 'PUT')
            throw new VmsynthError('VMS_USAGE', `--method must be GET, POST or PUT, got "${o.method}"`);
          let body: Buffer | undefined;
          if (o.request) {
            body = await fsp.readFile(o.request).catch((cause: unknown) => {
              throw new VmsynthError('VMS_USAGE', `cannot read --request ${o.request}: ${(cause as Error).message}`, {
                cause,
              });
            });
          }
          const request: OffloadRequest = { method, path: o.path, ...(body ? { body } : {}) };
          let tls: boolean | { ca?: Buffer; servername?: string } | undefined;
          if (o.tls || o.tlsCa || o.tlsServername) {
            const ca = o.tlsCa
              ? await fsp.readFile(o.tlsCa).catch((cause: unknown) => {
                  throw new VmsynthError('VMS_USAGE', `cannot read --tls-ca ${o.tlsCa}: ${(cause as Error).message}`, {
                    cause,
                  });
                })
              : undefined;
            tls = { ...(ca ? { ca } : {}), ...(o.tlsServername ? { servername: o.tlsServername } : {}) };
          }
          const bar = sendProgress(!json);
          try {
            const { synthesize } = await import('../client/client.js');
            const r = await synthesize({
              server: o.server,
              overlay: o.overlay,
              ...(o.overlayUrl ? { overlayUrl: o.overlayUrl } : {}),
              lookaside: o.lookaside,
              policy: o.policy,
              request,
              token: o.token ?? process.env.VMSYNTH_TOKEN,
              ...(tls ? { tls } : {}),
              timeoutMs: o.timeout * 1000,
              signal,
              onEvent: bar.onEvent,
              ...(o.maxRateMbit ? { maxBytesPerSecond: (o.maxRateMbit * 1e6) / 8 } : {}),
            });
            bar.done();
            if (!json)
              console.log(
                `synthesized on ${r.server} (session ${r.session}, base "${r.base}", ${r.policy})\n${synthLines(r)}\n  first response body  ${r.firstResponse.body.slice(0, 300)}`,
              );
            return r;
          } catch (err) {
            bar.done();
            throw err;
          }
        }),
    );
}
