/**
 * The ops side of the command line: `vmsynth serve` (the service),
 * `vmsynth config check`, `vmsynth token generate` and `vmsynth service
 * install`. Flags here only name
 * config keys; lib/core/config.ts resolves them against the config file and
 * the environment.
 */
import { promises as fsp } from 'node:fs';
import tls from 'node:tls';
import { Option, type Command } from 'commander';
import {
  checkExposure,
  exportPaths,
  KEYS,
  redacted,
  resolveConfig,
  tokenSha256,
  type Config,
  type Resolved,
} from '../core/config.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { isLoopbackHost } from '../core/net.js';
import { table } from './format.js';
import { dieBy, runCommand } from './run.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

function configOption(cmd: Command): Command {
  return cmd.option(
    '--config <file>',
    'config file (default: $VMSYNTH_CONFIG, else /etc/vmsynth/vmsynth.json if it exists)',
  );
}

const DEFAULTS = Object.fromEntries(KEYS.map((k) => [k.key, k.default])) as Record<keyof Config, unknown>;
/** A key's default as --help shows it. */
const def = (key: keyof Config) => show(DEFAULTS[key]);

/** Resolves the config from the flags, exports the paths, and remembers it for the logger. */
function resolveFor(o: Record<string, unknown>): Resolved {
  const r = resolveConfig({ flags: o, ...(typeof o.config === 'string' ? { configFile: o.config } : {}) });
  exportPaths(r.config);
  return r;
}

/** Checks beyond types: files that must be readable, keys that must load, a TLS pair that must match. */
async function deepCheck(c: Config): Promise<string[]> {
  const problems: string[] = [];
  for (const [key, dir] of [
    ['baseDir', c.baseDir],
    ['keyDir', c.keyDir],
  ] as const) {
    const st = await fsp.stat(dir).catch(() => null);
    if (!st?.isDirectory()) problems.push(`${key}: ${dir} is not a directory (create it, or fix the key)`);
  }
  const { trustedKeys } = await import('../overlay/keys.js');
  await trustedKeys(c.trust, c.keyDir).catch((e: unknown) => problems.push(`trust: ${asVmsynthError(e).message}`));
  if (c.tlsCert && c.tlsKey) {
    try {
      tls.createSecureContext({ cert: await fsp.readFile(c.tlsCert), key: await fsp.readFile(c.tlsKey) });
    } catch (e) {
      problems.push(`tlsCert/tlsKey: ${(e as Error).message}`);
    }
  }
  try {
    checkExposure(c);
  } catch (e) {
    problems.push((e as Error).message);
  }
  return problems;
}

/** A config value as people read it (addresses as host:port, null as off). */
function show(v: unknown): string {
  if (v === null) return 'off';
  if (typeof v === 'object' && v && 'host' in v && 'port' in v) return `${String(v.host)}:${String(v.port)}`;
  if (Array.isArray(v))
    return v.length
      ? v
          .map((x: unknown) =>
            typeof x === 'object' && x !== null ? String((x as { name: string }).name) : String(x as string),
          )
          .join(', ')
      : '(none)';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

export function registerServeCommands(program: Command): void {
  const serve = program
    .command('serve')
    .description(
      'Run the synthesis server: accept overlays from clients, resume their VMs early over FUSE, stream the rest, answer offload requests. Settings come from the config file, VMSYNTH_* variables and these flags, in rising precedence (`vmsynth config check` shows the result).',
    )
    .option('--listen <[host:]port>', `synthesis protocol address (default ${def('listen')})`)
    .option(
      '--metrics-listen <[host:]port>',
      'serve /healthz, /readyz and /metrics here ("off": not at all; default off)',
    )
    .option('--trust <file>', 'also trust overlays signed by this public key (repeatable)', collect)
    .option('--token <token>', 'require clients to present this token (the config file can list many clients instead)')
    .option('--tls-cert <file>', 'speak TLS with this certificate (PEM); needs --tls-key')
    .option('--tls-key <file>', "the certificate's private key (PEM)")
    .option('--threads <n>', `worker threads per session for verify + decompress + apply (default ${def('threads')})`)
    .option(
      '--max-in-flight-kib <n>',
      `background segment bytes asked for and not yet applied, per session (default ${def('maxInFlightKib')})`,
    )
    .option('--max-sessions <n>', `sessions at once (default ${def('maxSessions')})`)
    .option(
      '--max-sessions-per-client <n>',
      `sessions at once per authenticated client (default ${def('maxSessionsPerClient')})`,
    )
    .option(
      '--session-memory-mib <n>',
      `guest RAM + in-flight segments one session may use (default ${def('sessionMemoryMib')})`,
    )
    .option(
      '--connections-per-minute <n>',
      `new connections per minute from one address (default ${def('connectionsPerMinute')})`,
    )
    .option(
      '--handshake-timeout <seconds>',
      `time a connection has to authenticate and open or resume its session (default ${def('handshakeTimeoutS')})`,
    )
    .option(
      '--grace <seconds>',
      `how long a session whose connection dropped waits for a resume; 0 ends it at the drop (default ${def('graceS')})`,
    )
    .option('--keepalive <seconds>', `ping a connection quiet this long (default ${def('keepaliveS')})`)
    .option(
      '--idle <seconds>',
      `drop a connection that sent or read nothing this long; its session waits (default ${def('idleS')})`,
    )
    .option(
      '--max-offloads-in-flight <n>',
      `offload requests running plus replies not acknowledged, per session (default ${def('maxOffloadsInFlight')})`,
    )
    .option(
      '--pre-session-memory-mib <n>',
      `bytes all connections may buffer before their sessions start, MiB (default ${def('preSessionMemoryMib')})`,
    )
    .option(
      '--store-max-mib <n>',
      `cap on the cloudlet store, MiB; 0 turns the store off (default ${def('storeMaxMib')})`,
    )
    .addOption(new Option('--log-level <level>', 'debug | info | warn | error | silent (default info)'))
    .addOption(new Option('--log-format <format>', 'json (pino, to stdout; the default) or text (to stderr)'))
    .option('--no-verify-bases', 'skip re-hashing every base before listening (they are hashed at first use instead)')
    .option('--json', 'print the listening addresses as a JSON line once ready');
  configOption(serve).action(async (o: Record<string, unknown> & { verifyBases: boolean; json?: boolean }) => {
    let resolved: Resolved | null = null;
    await runCommand(
      !!o.json,
      async ({ signal, json }) => {
        const cfg = resolved!.config;
        const { startDaemon } = await import('../server/daemon.js');
        // The live session view hangs on the ops endpoint: none without one.
        const ops = cfg.metricsListen;
        const { SessionView } = await import('../web/session-view.js');
        const view = ops ? new SessionView({ tokenSha256: cfg.viewTokenSha256, open: isLoopbackHost(ops.host) }) : null;
        const d = await startDaemon(cfg, {
          verifyBases: o.verifyBases,
          ...(view ? { routes: (...a: Parameters<typeof view.handle>) => view.handle(...a) } : {}),
        }).catch((err: unknown) => {
          view?.close();
          throw err;
        });
        const a = d.server.address();
        const m = d.health?.address() ?? null;
        if (json) process.stdout.write(JSON.stringify({ listening: a, metrics: m }) + '\n');
        else if (cfg.logFormat === 'text')
          console.error(
            `vmsynth serve: listening on ${a.host}:${a.port}${m ? `, metrics on http://${m.host}:${m.port}/metrics` : ''} (SIGTERM or Ctrl-C stops${cfg.keepSessions ? ', leaving running sessions to their keepers for the next server' : ' and ends every session'}; a second one forces)`,
          );
        await new Promise<void>((resolve) => {
          if (signal.aborted) resolve();
          signal.addEventListener('abort', () => resolve(), { once: true });
        });
        const { forced } = await d.stop();
        view?.close();
        // Sessions still tearing down may hold a libvirt call that waits on this
        // process (see dieBy); the next start's janitor removes what is left.
        if (forced) dieBy('SIGKILL');
        return undefined;
      },
      {
        log: () => {
          resolved = resolveFor(o);
          return {
            level: resolved.config.logLevel,
            format: resolved.config.logFormat,
            to: resolved.config.logFormat === 'json' ? 'stdout' : 'stderr',
          };
        },
      },
    );
  });

  const config = program.command('config').description("The server's configuration.");
  configOption(
    config
      .command('check')
      .description(
        'Validate the config (file and VMSYNTH_* environment, as serve would read them) and print the effective value of every key with where it came from. Exits 78 (VMS_CONFIG) when something is wrong.',
      )
      .option('--json', 'print the effective config as JSON'),
  ).action(async (o: { config?: string; json?: boolean }) =>
    runCommand(!!o.json, async ({ json }) => {
      const r = resolveConfig(o.config ? { configFile: o.config } : {});
      const problems = await deepCheck(r.config);
      if (!json) {
        console.log(`config file: ${r.file ?? '(none; defaults and environment)'}`);
        console.log(table(KEYS.map((k) => [k.key, `${show(r.config[k.key])}  [${r.sources[k.key]}]`])));
      }
      if (problems.length)
        throw new VmsynthError(
          'VMS_CONFIG',
          `the config has ${problems.length} problem(s):\n  - ${problems.join('\n  - ')}`,
          { details: { problems } },
        );
      if (!json) console.log('config ok');
      return { file: r.file, config: redacted(r.config), sources: r.sources };
    }),
  );

  program
    .command('token')
    .description('Client credentials.')
    .command('generate')
    .description(
      'Make a client token: give the token to the client (--token or VMSYNTH_TOKEN), and put the printed entry into the server config\'s "clients" list (only its SHA-256 is kept there).',
    )
    .argument('<name>', 'client name (letters, digits, ".", "_", "-"; shows in logs and metrics)')
    .option('--json', 'print { name, token, tokenSha256 } as JSON')
    .action(async (name: string, o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        if (!/^[\w.-]{1,64}$/.test(name))
          throw new VmsynthError('VMS_USAGE', `a client name is 1-64 letters, digits, ".", "_" or "-", got "${name}"`);
        const { newToken } = await import('../server/auth.js');
        const token = newToken();
        const entry = { name, tokenSha256: tokenSha256(token) };
        if (!json)
          console.log(
            `token for client "${name}" (give it to the client; it is not stored anywhere):\n  ${token}\nentry for the "clients" list of the server config:\n  ${JSON.stringify(entry)}`,
          );
        return { ...entry, token };
      }),
    );

  program
    .command('service')
    .description('vmsynth as a systemd service.')
    .command('install')
    .description(
      'Install the service: link /usr/local/bin/vmsynth to this package, write the systemd unit (/etc/systemd/system/vmsynth.service), a starting config (/etc/vmsynth/vmsynth.json, never overwritten) and the state directories, and reload systemd. Idempotent: run it again after an upgrade.',
    )
    .option('--now', 'also enable and start the service (systemctl enable --now vmsynth)')
    .option('--root <dir>', 'install under this directory instead of / (a container root; systemctl is not run)')
    .option('--json', 'print { root, steps: [{ what, path, result }], systemd } as JSON')
    .action(async (o: { now?: boolean; root?: string; json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        const { installService } = await import('../server/service-install.js');
        const r = await installService({ ...(o.root ? { root: o.root } : {}), now: !!o.now });
        if (!json) {
          if (r.root !== '/') console.log(`under ${r.root}:`);
          console.log(table(r.steps.map((s) => [s.path, `${s.result}${s.note ? ` (${s.note})` : ''}`])));
          console.log(
            r.systemd === 'started'
              ? 'systemd: units reloaded; vmsynth enabled and started (systemctl status vmsynth)'
              : r.systemd === 'reloaded'
                ? 'systemd: units reloaded; start it with: systemctl enable --now vmsynth'
                : 'systemd: not running here; the unit starts with systemd next time',
          );
        }
        return r;
      }),
    );
}
