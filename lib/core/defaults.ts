/**
 * The one table of defaults: every value vmsynth falls back to when config,
 * environment, flags and library options say nothing. The config keys
 * (core/config.ts), the host paths (core/paths.ts), the server and the
 * synthesis session all read them here, so a default changes in one place.
 */

export const DEFAULTS = {
  /** The synthesis protocol's TCP port (Elijah's, 8021). */
  port: 8021,
  /** The health and metrics HTTP port, when only a host is given. */
  metricsPort: 9121,
  /** Where the server listens when nothing says otherwise: loopback only. */
  listenHost: '127.0.0.1',
  /** Base VM directories, one per base. */
  baseDir: '/var/lib/vmsynth/bases',
  /** Session directories (FUSE mount points, QMP sockets, local disk layers). */
  runDir: '/run/vmsynth',
  /** Signing keys, and trusted public keys in trusted/. */
  keyDir: '/var/lib/vmsynth/keys',
  /** Test guest builds and downloaded Debian packages. */
  cacheDir: '/var/cache/vmsynth',
  /** The cloudlet store: segments of overlays synthesized here, for warm starts. */
  storeDir: '/var/lib/vmsynth/store',
  /** The store's cap on segment bytes, MiB (0: no store). */
  storeMaxMib: 8192,
  libvirtUri: 'qemu:///system',
  configFile: '/etc/vmsynth/vmsynth.json',
  /** Sessions at once; more are refused with VMS_BUSY. */
  maxSessions: 8,
  /** Sessions at once per authenticated client name; more are refused with VMS_LIMIT. */
  maxSessionsPerClient: 4,
  /** Guest RAM plus in-flight segment bytes one session may pin, MiB. */
  sessionMemoryMib: 4096,
  /** Background segment bytes asked for and not yet applied, per session, KiB. */
  maxInFlightKib: 2048,
  /** Worker threads per session for verify + decompress + apply. */
  threads: 2,
  /** New connections per minute from one address; more are refused with VMS_RATE_LIMITED. */
  connectionsPerMinute: 120,
  /** Seconds a new connection has to authenticate and open its session. */
  handshakeTimeoutS: 30,
  /** Seconds a session whose connection dropped waits for its client to resume it. */
  graceS: 120,
  /** Seconds of quiet after which each side of a connection sends a ping. */
  keepaliveS: 10,
  /** Seconds a connection may send (or read) nothing before the server drops it; its session waits out graceS. */
  idleS: 30,
  /** Offload requests running plus replies not yet acknowledged, per session. */
  maxOffloadsInFlight: 8,
  /** MiB all connections together may buffer before their sessions start (manifests of up to 512 MiB each). */
  preSessionMemoryMib: 1024,
  /** Seconds SIGTERM waits for sessions to tear down before forcing. */
  gracefulStopS: 30,
  logLevel: 'info',
  logFormat: 'json',
  /** The link rate `vmsynth demo` paces its client to, Mbit/s (802.11n's effective rate, as Elijah measured). */
  demoLinkMbit: 38,
  /** Milliseconds an offload request may wait for the app in the VM. */
  offloadTimeoutMs: 120_000,
} as const;
