/**
 * `vmsynth serve` as a service: the synthesis server plus what ops need
 * around it. Owns the order of start and stop:
 *   start: metrics subscribed -> FUSE, libvirt, stale state, keys, bases
 *          verified, listener bound (SynthServer.listen) -> control socket
 *          (control.ts, in the run directory) -> health endpoint
 *          -> READY=1 to systemd -> watchdog pings;
 *   stop:  STOPPING=1 -> within gracefulStopS, every running session left
 *          to its keeper for the next server (SynthServer.release; without
 *          keepers, every session ended, clients told VMS_SHUTTING_DOWN)
 *          -> endpoint and metrics closed.
 * A stop that overruns gracefulStopS is reported as forced; the caller exits
 * and the next start's janitor removes what was left.
 */
import { readFile } from 'node:fs/promises';
import { checkExposure, type Config } from '../core/config.js';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import * as sd from '../core/sd-notify.js';
import { Announcer } from './announce.js';
import { ControlSocket } from './control.js';
import { HealthEndpoint, type Routes } from './health-http.js';
import { ServerMetrics } from './metrics.js';
import { SynthServer } from './server.js';

export interface DaemonHandle {
  server: SynthServer;
  health: HealthEndpoint | null;
  /** Leaves (or ends) every session and stops; `forced` when that outlived gracefulStopS. */
  stop(): Promise<{ forced: boolean }>;
}

export async function startDaemon(
  cfg: Config,
  opts: { verifyBases?: boolean; /** More routes on the ops endpoint (the live session view). */ routes?: Routes } = {},
): Promise<DaemonHandle> {
  checkExposure(cfg);
  const metrics = new ServerMetrics();
  let server: SynthServer | null = null;
  let health: HealthEndpoint | null = null;
  let control: ControlSocket | null = null;
  let announcer: Announcer | null = null;
  try {
    const tls =
      cfg.tlsCert && cfg.tlsKey ? { cert: await readTls(cfg.tlsCert), key: await readTls(cfg.tlsKey) } : undefined;
    sd.status('verifying bases and connecting to libvirt');
    server = await SynthServer.listen({
      host: cfg.listen.host,
      port: cfg.listen.port,
      trust: cfg.trust,
      clients: cfg.clients,
      ...(tls ? { tls } : {}),
      threads: cfg.threads,
      maxInFlightBytes: cfg.maxInFlightKib * 1024,
      maxSessions: cfg.maxSessions,
      maxSessionsPerClient: cfg.maxSessionsPerClient,
      sessionMemoryBytes: cfg.sessionMemoryMib * 2 ** 20,
      connectionsPerMinute: cfg.connectionsPerMinute,
      handshakeTimeoutMs: cfg.handshakeTimeoutS * 1000,
      graceMs: cfg.graceS * 1000,
      keepSessions: cfg.keepSessions,
      keepaliveMs: cfg.keepaliveS * 1000,
      idleMs: cfg.idleS * 1000,
      maxOffloadsInFlight: cfg.maxOffloadsInFlight,
      preSessionMemoryBytes: cfg.preSessionMemoryMib * 2 ** 20,
      verifyBases: opts.verifyBases ?? true,
      ...(cfg.handoffToken ? { handoff: { token: cfg.handoffToken } } : {}),
      ...(cfg.s3Sources.length
        ? {
            objects: {
              endpoint: cfg.s3Endpoint,
              ...(cfg.s3Region ? { region: cfg.s3Region } : {}),
              timeoutMs: cfg.s3TimeoutS * 1000,
              sources: cfg.s3Sources,
              parallel: cfg.s3Parallel,
            },
          }
        : {}),
      ...(cfg.storeMaxMib > 0
        ? {
            store: {
              dir: cfg.storeDir,
              maxBytes: cfg.storeMaxMib * 2 ** 20,
              admitReceived: cfg.storeReceived,
              lookaside: cfg.storeLookaside,
            },
          }
        : {}),
    });
    const s = server;
    control = await ControlSocket.listen(s, cfg.runDir);
    if (cfg.announce) announcer = await Announcer.start({ port: s.address().port, iface: cfg.announceInterface });
    if (cfg.metricsListen) {
      health = await HealthEndpoint.listen(
        cfg.metricsListen.host,
        cfg.metricsListen.port,
        metrics,
        {
          notReady: async () => {
            if (!s.accepting) return 'shutting down';
            if (s.sessionCount >= cfg.maxSessions) return `running its limit of ${cfg.maxSessions} sessions`;
            if (!(await s.libvirtAlive())) return 'libvirt does not answer';
            return null;
          },
        },
        opts.routes,
      );
    }
  } catch (err) {
    await announcer?.close();
    await control?.close();
    await server?.close();
    metrics.close();
    throw err;
  }
  const a = server.address();
  sd.ready(`listening on ${a.host}:${a.port}`);
  // A ping only goes out while the event loop turns: a wedged server is restarted by systemd.
  const stopWatchdog = sd.startWatchdog();

  const srv = server;
  const endpoint = health;
  const ctl = control;
  const ann = announcer;
  let stopping: Promise<{ forced: boolean }> | null = null;
  return {
    server: srv,
    health: endpoint,
    stop: () => {
      stopping ??= (async () => {
        sd.stopping();
        await ann?.close(); // say goodbye first: clients stop picking this cloudlet
        let timer: NodeJS.Timeout | undefined;
        const overrun = new Promise<'overrun'>((resolve) => {
          timer = setTimeout(() => resolve('overrun'), cfg.gracefulStopS * 1000);
        });
        const how = await Promise.race([srv.release().then(() => 'done' as const), overrun]);
        clearTimeout(timer);
        stopWatchdog?.();
        if (how === 'overrun')
          publish('cleanupFailed', {
            what: 'graceful stop',
            error: new VmsynthError(
              'VMS_INTERRUPTED',
              `sessions still tearing down after ${cfg.gracefulStopS} s; stopping anyway (the next start cleans what is left)`,
            ),
          });
        await endpoint?.close();
        await ctl.close();
        metrics.close();
        return { forced: how === 'overrun' };
      })();
      return stopping;
    },
  };
}

async function readTls(file: string): Promise<Buffer> {
  return readFile(file).catch((cause: unknown) => {
    throw new VmsynthError('VMS_CONFIG', `cannot read TLS file ${file}: ${(cause as Error).message}`, { cause });
  });
}
