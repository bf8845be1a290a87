/**
 * `vmsynth serve` (the synthesis server) and `vmsynth synth` (the mobile
 * client): thin wrappers over lib/server and lib/client.
 */
import { promises as fsp } from 'node:fs';
import { Option, type Command } from 'commander';
import { VmsynthError } from '../core/errors.js';
import { synthesize, type ClientEvent, type OffloadRequest, type SynthesizeResult } from '../client/client.js';
import { DEFAULT_PORT, POLICIES, type Policy } from '../protocol/messages.js';
import { SynthServer } from '../server/server.js';
import { bytes, ms, table } from './format.js';
import { positiveInt, runCommand } from './run.js';

const collect = (v: string, prev: string[]) => [...prev, v];

function policy(v: string): Policy {
  if (!(POLICIES as readonly string[]).includes(v)) throw new VmsynthError('VMS_USAGE', `--policy must be one of ${POLICIES.join(', ')}, got "${v}"`);
  return v as Policy;
}

function listen(v: string): { host: string; port: number } {
  const m = /^(?:(\[[^\]]+\]|[^:]*):)?(\d+)$/.exec(v) ?? /^(\[[^\]]+\]|[^:]+)$/.exec(v);
  if (!m) throw new VmsynthError('VMS_USAGE', `--listen must be [HOST:]PORT or HOST, got "${v}"`);
  const port = m[2] !== undefined ? Number(m[2]) : DEFAULT_PORT;
  if (port > 65535) throw new VmsynthError('VMS_USAGE', `--listen port ${port} is out of range`);
  return { host: (m[1] || '127.0.0.1').replace(/^\[|\]$/g, ''), port };
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
    ['sent before first response', `${bytes(r.bytesSentBeforeFirstResponse)} of ${bytes(r.overlayBytes)} (${r.segmentsSentBeforeFirstResponse} of ${r.segments} segments)`],
    ['demand requests', String(r.demandRequests)],
  ]);
}

function progressBar(): { onEvent: (e: ClientEvent) => void; done: () => void } {
  if (!process.stderr.isTTY) return { onEvent: () => undefined, done: () => undefined };
  let last = '';
  const onEvent = (e: ClientEvent) => {
    if (e.type !== 'segment') return;
    const width = 30;
    const filled = Math.round((e.bytesSent / Math.max(1, e.overlayBytes)) * width);
    const line = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${e.sent}/${e.total} segments, ${bytes(e.bytesSent)} (${e.lane})`;
    if (line !== last) process.stderr.write(`\r${line}`);
    last = line;
  };
  return { onEvent, done: () => { if (last) process.stderr.write('\n'); } };
}

export function registerSynthCommands(program: Command): void {
  program
    .command('serve')
    .description('Run the synthesis server: accept overlays from clients, resume their VMs early over FUSE, stream the rest, answer offload requests.')
    .addOption(new Option('--listen <[host:]port>', 'address to listen on').argParser(listen).default({ host: '127.0.0.1', port: DEFAULT_PORT }, `127.0.0.1:${DEFAULT_PORT}`))
    .option('--trust <file>', 'also trust overlays signed by this public key (repeatable)', collect, [])
    .option('--token <token>', 'require clients to present this token')
    .option('--threads <n>', 'worker threads per session for verify + decompress + apply', positiveInt('--threads'), 2)
    .option('--max-in-flight-kib <n>', 'background segment bytes requested and not yet applied, per session', positiveInt('--max-in-flight-kib'), 2048)
    .option('--max-sessions <n>', 'sessions at once', positiveInt('--max-sessions'), 8)
    .option('--json', 'print the listening address as a JSON line once ready')
    .action(async (o: { listen: { host: string; port: number }; trust: string[]; token?: string; threads: number; maxInFlightKib: number; maxSessions: number; json?: boolean }) =>
      runCommand(!!o.json, async ({ signal, json }) => {
        const server = await SynthServer.listen({
          host: o.listen.host, port: o.listen.port, trust: o.trust, token: o.token ?? process.env.VMSYNTH_TOKEN,
          threads: o.threads, maxInFlightBytes: o.maxInFlightKib * 1024, maxSessions: o.maxSessions,
        });
        const a = server.address();
        if (json) process.stdout.write(JSON.stringify({ listening: a }) + '\n');
        else console.log(`vmsynth serve: listening on ${a.host}:${a.port} (SIGTERM or Ctrl-C ends every session and stops)`);
        await new Promise<void>((resolve) => {
          if (signal.aborted) resolve();
          signal.addEventListener('abort', () => resolve(), { once: true });
        });
        await server.close();
        if (!json) console.log('vmsynth serve: every session ended; stopped');
        return undefined;
      }));

  program
    .command('synth')
    .description('Synthesize an overlay on a server: stream it in the order the server asks, send the first offload request once the VM is up, print the timeline.')
    .requiredOption('--server <host:port>', 'synthesis server')
    .requiredOption('--overlay <dir>', 'overlay directory')
    .option('--policy <p>', `${POLICIES.join(' | ')}`, policy, 'early-start' as Policy)
    .option('--path <path>', 'path of the first offload request', '/run')
    .option('--request <file>', 'body of the first offload request (sent as POST unless --method says otherwise)')
    .option('--method <m>', 'GET, POST or PUT (default GET, or POST with --request)')
    .option('--token <token>', 'client token, if the server requires one')
    .option('--max-rate-mbit <n>', 'pace segments to this many Mbit/s, to emulate a slower link (default: as fast as the link goes)', positiveInt('--max-rate-mbit'))
    .option('--timeout <seconds>', 'limit for the whole session', positiveInt('--timeout'), 600)
    .option('--json', 'print the result as JSON')
    .action(async (o: { server: string; overlay: string; policy: Policy; path: string; request?: string; method?: string; token?: string; maxRateMbit?: number; timeout: number; json?: boolean }) =>
      runCommand(!!o.json, async ({ signal, json }) => {
        if (!o.path.startsWith('/')) throw new VmsynthError('VMS_USAGE', `--path must start with "/", got "${o.path}"`);
        const method = (o.method ?? (o.request ? 'POST' : 'GET')).toUpperCase();
        if (method !== 'GET' && method !== 'POST' && method !== 'PUT') throw new VmsynthError('VMS_USAGE', `--method must be GET, POST or PUT, got "${o.method}"`);
        let body: Buffer | undefined;
        if (o.request) {
          body = await fsp.readFile(o.request).catch((cause: unknown) => {
            throw new VmsynthError('VMS_USAGE', `cannot read --request ${o.request}: ${(cause as Error).message}`, { cause });
          });
        }
        const request: OffloadRequest = { method, path: o.path, ...(body ? { body } : {}) };
        const bar = json ? { onEvent: () => undefined, done: () => undefined } : progressBar();
        try {
          const r = await synthesize({ server: o.server, overlay: o.overlay, policy: o.policy, request, token: o.token ?? process.env.VMSYNTH_TOKEN, timeoutMs: o.timeout * 1000, signal, onEvent: bar.onEvent,
            ...(o.maxRateMbit ? { maxBytesPerSecond: (o.maxRateMbit * 1e6) / 8 } : {}),
          });
          bar.done();
          if (!json) console.log(`synthesized on ${r.server} (session ${r.session}, base "${r.base}", ${r.policy})\n${synthLines(r)}\n  first response body  ${r.firstResponse.body.slice(0, 300)}`);
          return r;
        } catch (err) {
          bar.done();
          throw err;
        }
      }));
}
