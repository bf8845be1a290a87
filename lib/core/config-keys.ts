/**
 * The config keys: one table (KEYS) naming every key once, with its place in
 * the file, its environment variable, its flag, its parser and its default
 * (from core/defaults.ts). The parsers are in config-values.ts; resolving
 * the sources is config.ts's job.
 */
import type { Config } from './config-shape.js';
import { DEFAULTS } from './defaults.js';
import {
  absPath,
  address,
  bool,
  optSha256,
  optUrl,
  addresses,
  optIp,
  s3Urls,
  clients,
  int,
  list,
  oneOf,
  optPath,
  str,
  type Raw,
  type Source,
} from './config-values.js';

export { tokenSha256, type Address, type ClientCredential, type Raw, type Source } from './config-values.js';
export type { Config } from './config-shape.js';

export interface KeySpec<K extends keyof Config> {
  key: K;
  /** Environment variables, first found wins (the first is the documented one). */
  env: string[];
  /** Commander's attribute name for the flag, when there is one. */
  flag?: string;
  doc: string;
  default: Config[K];
  parse(v: Raw, from: Source): Config[K];
  /** Printed redacted by `config check`. */
  secret?: boolean;
}

const spec = <K extends keyof Config>(
  s: Omit<KeySpec<K>, 'parse'> & { parse: (key: string) => (v: Raw, from: Source) => Config[K] },
): KeySpec<K> => ({ ...s, parse: s.parse(s.key) });

export const KEYS = [
  spec({
    key: 'listen',
    env: ['VMSYNTH_LISTEN'],
    flag: 'listen',
    doc: 'synthesis protocol address, [HOST:]PORT',
    default: { host: DEFAULTS.listenHost, port: DEFAULTS.port },
    parse: (k) => address(k, DEFAULTS.port),
  }),
  spec({
    key: 'metricsListen',
    env: ['VMSYNTH_METRICS_LISTEN'],
    flag: 'metricsListen',
    doc: 'HTTP /healthz, /readyz, /metrics address, [HOST:]PORT, or "off"',
    default: null,
    parse: (k) => (v, from) => (v === 'off' || v === null ? null : address(k, DEFAULTS.metricsPort)(v, from)),
  }),
  spec({
    key: 'viewTokenSha256',
    env: ['VMSYNTH_VIEW_TOKEN_SHA256'],
    doc: 'SHA-256 of the token the live session view (/sessions on metricsListen) asks for (the tokenSha256 `vmsynth token generate` prints); none: no token on loopback, and the view is off on any other address',
    default: null,
    parse: optSha256,
  }),
  spec({
    key: 'baseDir',
    env: ['VMSYNTH_BASE_DIR'],
    doc: 'base VM directories',
    default: DEFAULTS.baseDir,
    parse: absPath,
  }),
  spec({
    key: 'runDir',
    env: ['VMSYNTH_RUN_DIR'],
    doc: 'session directories and FUSE mounts',
    default: DEFAULTS.runDir,
    parse: absPath,
  }),
  spec({
    key: 'keyDir',
    env: ['VMSYNTH_KEY_DIR'],
    doc: 'signing keys, and trusted public keys in trusted/',
    default: DEFAULTS.keyDir,
    parse: absPath,
  }),
  spec({
    key: 'cacheDir',
    env: ['VMSYNTH_CACHE_DIR'],
    doc: 'test guest build cache',
    default: DEFAULTS.cacheDir,
    parse: absPath,
  }),
  spec({
    key: 'storeDir',
    env: ['VMSYNTH_STORE_DIR'],
    doc: 'the cloudlet store: segments of overlays synthesized here, for warm starts',
    default: DEFAULTS.storeDir,
    parse: absPath,
  }),
  spec({
    key: 'storeMaxMib',
    env: ['VMSYNTH_STORE_MAX_MIB'],
    flag: 'storeMaxMib',
    doc: 'cap on the store, MiB; least recently used segments are evicted to stay under it (0: no store)',
    default: DEFAULTS.storeMaxMib,
    parse: (k) => int(0)(k),
  }),
  spec({
    key: 'storeReceived',
    env: ['VMSYNTH_STORE_RECEIVED'],
    doc: 'whether segments received from clients enter the store (true | false)',
    default: true,
    parse: bool,
  }),
  spec({
    key: 'storeLookaside',
    env: ['VMSYNTH_STORE_LOOKASIDE'],
    doc: "whether sessions take chunks other overlays' stored segments hold instead of asking the client (true | false)",
    default: true,
    parse: bool,
  }),
  spec({
    key: 's3Endpoint',
    env: ['VMSYNTH_S3_ENDPOINT'],
    doc: 'S3-compatible object store endpoint (http[s]://host:port, for MinIO or Ceph RGW); off: AWS S3',
    default: null,
    parse: optUrl,
  }),
  spec({
    key: 's3Region',
    env: ['VMSYNTH_S3_REGION'],
    doc: "object store region (default: the AWS SDK's, from AWS_REGION or ~/.aws/config, else us-east-1)",
    default: null,
    secret: true,
    parse: (k) => (v, from) => (v === null || v === '' ? null : str(k)(v, from)),
  }),
  spec({
    key: 's3Sources',
    env: ['VMSYNTH_S3_SOURCES'],
    doc: 'object store locations clients may name their overlay by, s3://BUCKET[/PREFIX] (env: separated by "," or spaces); none: clients send every segment',
    default: [],
    parse: s3Urls,
  }),
  spec({
    key: 's3TimeoutS',
    env: ['VMSYNTH_S3_TIMEOUT_S'],
    doc: 'seconds an object store request may take before the session falls back to its client',
    default: 10,
    parse: (k) => int(1, 600)(k),
  }),
  spec({
    key: 's3Parallel',
    env: ['VMSYNTH_S3_PARALLEL'],
    doc: 'ranged GETs at once per session from the object store',
    default: 4,
    parse: (k) => int(1, 64)(k),
  }),
  spec({
    key: 'libvirtUri',
    env: ['VMSYNTH_LIBVIRT_URI', 'LIBVIRT_URI'],
    doc: 'libvirt connection',
    default: DEFAULTS.libvirtUri,
    parse: str,
  }),
  spec({
    key: 'trust',
    env: ['VMSYNTH_TRUST'],
    flag: 'trust',
    doc: 'more trusted overlay public key files (env: separated by "," or ":")',
    default: [],
    parse: list,
  }),
  spec({
    key: 'clients',
    env: ['VMSYNTH_TOKEN'],
    flag: 'token',
    doc: 'clients allowed in: file, [{name, tokenSha256}]; env/flag, one token',
    default: [],
    parse: clients,
    secret: true,
  }),
  spec({
    key: 'tlsCert',
    env: ['VMSYNTH_TLS_CERT'],
    flag: 'tlsCert',
    doc: 'TLS certificate (PEM); with tlsKey the server speaks TLS',
    default: null,
    parse: optPath,
  }),
  spec({
    key: 'tlsKey',
    env: ['VMSYNTH_TLS_KEY'],
    flag: 'tlsKey',
    doc: 'TLS private key (PEM)',
    default: null,
    parse: optPath,
  }),
  spec({
    key: 'maxSessions',
    env: ['VMSYNTH_MAX_SESSIONS'],
    flag: 'maxSessions',
    doc: 'sessions at once (more: VMS_BUSY)',
    default: DEFAULTS.maxSessions,
    parse: (k) => int(1, 1024)(k),
  }),
  spec({
    key: 'maxSessionsPerClient',
    env: ['VMSYNTH_MAX_SESSIONS_PER_CLIENT'],
    flag: 'maxSessionsPerClient',
    doc: 'sessions at once per client name (more: VMS_LIMIT)',
    default: DEFAULTS.maxSessionsPerClient,
    parse: (k) => int(1, 1024)(k),
  }),
  spec({
    key: 'sessionMemoryMib',
    env: ['VMSYNTH_SESSION_MEMORY_MIB'],
    flag: 'sessionMemoryMib',
    doc: 'guest RAM + in-flight segments one session may use, MiB (more: VMS_LIMIT)',
    default: DEFAULTS.sessionMemoryMib,
    parse: (k) => int(64)(k),
  }),
  spec({
    key: 'maxInFlightKib',
    env: ['VMSYNTH_MAX_IN_FLIGHT_KIB'],
    flag: 'maxInFlightKib',
    doc: 'background segment bytes asked for and not yet applied, per session, KiB',
    default: DEFAULTS.maxInFlightKib,
    parse: (k) => int(64, 1 << 20)(k),
  }),
  spec({
    key: 'threads',
    env: ['VMSYNTH_THREADS'],
    flag: 'threads',
    doc: 'worker threads per session for verify + decompress + apply',
    default: DEFAULTS.threads,
    parse: (k) => int(1, 64)(k),
  }),
  spec({
    key: 'connectionsPerMinute',
    env: ['VMSYNTH_CONNECTIONS_PER_MINUTE'],
    flag: 'connectionsPerMinute',
    doc: 'new connections per minute from one address (more: VMS_RATE_LIMITED)',
    default: DEFAULTS.connectionsPerMinute,
    parse: (k) => int(1)(k),
  }),
  spec({
    key: 'handshakeTimeoutS',
    env: ['VMSYNTH_HANDSHAKE_TIMEOUT_S'],
    flag: 'handshakeTimeout',
    doc: 'seconds a connection has to authenticate and open its session',
    default: DEFAULTS.handshakeTimeoutS,
    parse: (k) => int(1, 3600)(k),
  }),
  spec({
    key: 'graceS',
    env: ['VMSYNTH_GRACE_S'],
    flag: 'grace',
    doc: 'seconds a session whose connection dropped waits for its client to resume it (0: it ends at the drop)',
    default: DEFAULTS.graceS,
    parse: (k) => int(0, 86_400)(k),
  }),
  spec({
    key: 'keepSessions',
    env: ['VMSYNTH_KEEP_SESSIONS'],
    doc: 'whether sessions outlive the server: a stop, restart or crash leaves each VM running for graceS, and the next server adopts it (true | false)',
    default: true,
    parse: bool,
  }),
  spec({
    key: 'announce',
    env: ['VMSYNTH_ANNOUNCE'],
    doc: 'announce this cloudlet on the local network with DNS-SD (_vmsynth._tcp, mDNS) so clients and other cloudlets find it (`vmsynth discover`) (true | false)',
    default: false,
    parse: bool,
  }),
  spec({
    key: 'announceInterface',
    env: ['VMSYNTH_ANNOUNCE_INTERFACE'],
    doc: "the IP address of the interface mDNS announcements (and `vmsynth discover`'s queries) use; none: the system's default multicast interface",
    default: null,
    parse: optIp,
  }),
  spec({
    key: 'handoffToken',
    env: ['VMSYNTH_HANDOFF_TOKEN'],
    doc: "the token this cloudlet presents when it hands a session off to another cloudlet that wants client tokens (one of that cloudlet's clients'); none: it presents none",
    default: null,
    secret: true,
    parse: (k) => (v, from) => (v === null || v === '' ? null : str(k)(v, from)),
  }),
  spec({
    key: 'cloudlets',
    env: ['VMSYNTH_CLOUDLETS'],
    doc: '`vmsynth discover` asks these cloudlets too, HOST:PORT (env: separated by "," or spaces): the static list where multicast does not reach',
    default: [],
    parse: (k) => addresses(k, DEFAULTS.port),
  }),
  spec({
    key: 'keepaliveS',
    env: ['VMSYNTH_KEEPALIVE_S'],
    flag: 'keepalive',
    doc: 'seconds of quiet after which each side of a connection sends a ping',
    default: DEFAULTS.keepaliveS,
    parse: (k) => int(1, 3600)(k),
  }),
  spec({
    key: 'idleS',
    env: ['VMSYNTH_IDLE_S'],
    flag: 'idle',
    doc: 'seconds a connection may send or read nothing before it is dropped (its session waits graceS)',
    default: DEFAULTS.idleS,
    parse: (k) => int(2, 3600)(k),
  }),
  spec({
    key: 'maxOffloadsInFlight',
    env: ['VMSYNTH_MAX_OFFLOADS_IN_FLIGHT'],
    flag: 'maxOffloadsInFlight',
    doc: 'offload requests running plus replies not yet acknowledged, per session (more: VMS_LIMIT for that request)',
    default: DEFAULTS.maxOffloadsInFlight,
    parse: (k) => int(1, 1024)(k),
  }),
  spec({
    key: 'preSessionMemoryMib',
    env: ['VMSYNTH_PRE_SESSION_MEMORY_MIB'],
    flag: 'preSessionMemoryMib',
    doc: 'MiB all connections together may buffer before their sessions start (manifests; more: VMS_BUSY)',
    default: DEFAULTS.preSessionMemoryMib,
    parse: (k) => int(1)(k),
  }),
  spec({
    key: 'gracefulStopS',
    env: ['VMSYNTH_GRACEFUL_STOP_S'],
    doc: "seconds SIGTERM waits for sessions to tear down before forcing (keep under the unit's TimeoutStopSec)",
    default: DEFAULTS.gracefulStopS,
    parse: (k) => int(1, 3600)(k),
  }),
  spec({
    key: 'logLevel',
    env: ['LOG_LEVEL'],
    flag: 'logLevel',
    doc: 'debug | info | warn | error | silent',
    default: DEFAULTS.logLevel,
    parse: (k) => oneOf(k, ['debug', 'info', 'warn', 'error', 'silent'] as const),
  }),
  spec({
    key: 'logFormat',
    env: ['LOG_FORMAT'],
    flag: 'logFormat',
    doc: 'json (pino, to stdout) | text (to stderr)',
    default: DEFAULTS.logFormat,
    parse: (k) => oneOf(k, ['json', 'text'] as const),
  }),
] as const;
