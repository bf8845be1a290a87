/**
 * Finding the cloudlets in reach: those announced with DNS-SD on the local
 * network (`_vmsynth._tcp`, browsed through bonjour-service on one interface
 * or the default), plus a static list; each is then asked what it offers
 * (an `info` request: accelerator, bases, load) and timed (the TCP connect).
 * `pickCloudlet` chooses one for an overlay: it must hold the overlay's
 * base and have room; then the least loaded, then the nearest.
 */
import { Bonjour } from 'bonjour-service';
import { VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { mdnsOptions, SERVICE_TYPE } from '../protocol/dns-sd.js';
import { FramedSocket } from '../protocol/framed-socket.js';
import {
  FRAME_CAPS,
  parseServerMessage,
  PROTOCOL,
  type CloudletBase,
  type ServerMessage,
} from '../protocol/messages.js';
import { connect } from './connect.js';

export interface Cloudlet {
  /** The DNS-SD instance name, or "static". */
  name: string;
  host: string;
  port: number;
  source: 'mdns' | 'static';
  /** The TCP connect, ms. */
  rttMs: number | null;
  /** What it said of itself; null when it could not be asked (`error` says why). */
  info: { server: string; accel: string; bases: CloudletBase[]; sessions: number; maxSessions: number } | null;
  error?: { code: string; message: string };
}

export interface DiscoverOptions {
  /** Browse mDNS for this long (default 1,500 ms); 0: the static list only. */
  browseMs?: number;
  /** The address of the interface to browse on; default the system's. */
  iface?: string | null;
  static?: Array<{ host: string; port: number }>;
  token?: string;
  /** How long asking one cloudlet may take (default 3 s). */
  askMs?: number;
}

/** The cloudlets announced on the local network within `ms`. */
export function browse(
  ms: number,
  iface: string | null = null,
): Promise<Array<{ name: string; host: string; port: number }>> {
  return new Promise((resolve) => {
    const found = new Map<string, { name: string; host: string; port: number }>();
    const bonjour = new Bonjour(mdnsOptions(iface), () => undefined);
    const browser = bonjour.find({ type: SERVICE_TYPE }, (s) => {
      // The address the answer came from is the one that reaches it from here.
      const host = s.referer?.address ?? s.addresses?.find((a) => !a.includes(':'));
      if (host) found.set(`${host}:${s.port}`, { name: s.name, host, port: s.port });
    });
    setTimeout(() => {
      browser.stop();
      bonjour.destroy(() => resolve([...found.values()]));
    }, ms);
  });
}

/** Asks one cloudlet what it offers (hello, then `info`), timing the connect. */
export async function askCloudlet(
  host: string,
  port: number,
  opts: { token?: string; timeoutMs?: number } = {},
): Promise<Pick<Cloudlet, 'rttMs' | 'info'>> {
  const timeoutMs = opts.timeoutMs ?? 3000;
  const t0 = performance.now();
  const socket = await connect(host, port, undefined, undefined, timeoutMs);
  const rttMs = Math.round((performance.now() - t0) * 10) / 10;
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, info?: Cloudlet['info']) => {
      clearTimeout(timer);
      io.destroy();
      if (err) reject(err);
      else resolve({ rttMs, info: info! });
    };
    const io = new FramedSocket(socket, FRAME_CAPS.greeting, {
      frame: (f) => {
        let m: ServerMessage;
        try {
          m = parseServerMessage(f);
        } catch (err) {
          return done(err as Error);
        }
        if (m.type === 'welcome') io.send({ type: 'info' });
        else if (m.type === 'info') {
          const { type: _type, ...info } = m;
          done(null, info);
        } else if (m.type === 'error') done(new VmsynthError('VMS_PROTOCOL', `${m.code}: ${m.message}`));
      },
      invalid: (err) => done(err),
      closed: () => done(new VmsynthError('VMS_PEER_GONE', `${host}:${port} closed the connection`)),
    });
    const timer = setTimeout(
      () => done(new VmsynthError('VMS_CONNECT', `${host}:${port} did not say what it offers within ${timeoutMs} ms`)),
      timeoutMs,
    );
    io.send({
      type: 'hello',
      protocol: PROTOCOL,
      client: `vmsynth ${VMSYNTH_VERSION} (discover)`,
      ...(opts.token !== undefined ? { token: opts.token } : {}),
    });
  });
}

/** The cloudlets in reach: announced ones and the static list, each asked what it offers. */
export async function discover(opts: DiscoverOptions = {}): Promise<Cloudlet[]> {
  const browsed = (opts.browseMs ?? 1500) > 0 ? await browse(opts.browseMs ?? 1500, opts.iface ?? null) : [];
  const all = new Map<string, Omit<Cloudlet, 'rttMs' | 'info'>>();
  for (const b of browsed) all.set(`${b.host}:${b.port}`, { ...b, source: 'mdns' });
  for (const s of opts.static ?? [])
    if (!all.has(`${s.host}:${s.port}`)) all.set(`${s.host}:${s.port}`, { name: 'static', ...s, source: 'static' });
  return Promise.all(
    [...all.values()].map(async (c): Promise<Cloudlet> => {
      try {
        return { ...c, ...(await askCloudlet(c.host, c.port, { token: opts.token, timeoutMs: opts.askMs })) };
      } catch (err) {
        const e = err instanceof VmsynthError ? err : new VmsynthError('VMS_CONNECT', String(err));
        return { ...c, rttMs: null, info: null, error: { code: e.code, message: e.message } };
      }
    }),
  );
}

/** The base an overlay needs, by its images' hashes (an overlay manifest's `base`). */
export interface WantedBase {
  disk: { sha256: string };
  memory: { sha256: string };
}

/** The cloudlet to use for an overlay over `base`: holds it and has room; least loaded, then nearest. Null: none. */
export function pickCloudlet(cloudlets: readonly Cloudlet[], base: WantedBase): Cloudlet | null {
  const fits = cloudlets.filter(
    (c) =>
      c.info &&
      c.info.sessions < c.info.maxSessions &&
      c.info.bases.some((b) => b.disk === base.disk.sha256 && b.memory === base.memory.sha256),
  );
  const load = (c: Cloudlet) => c.info!.sessions / Math.max(1, c.info!.maxSessions);
  fits.sort((a, b) => load(a) - load(b) || (a.rttMs ?? Infinity) - (b.rttMs ?? Infinity));
  return fits[0] ?? null;
}
