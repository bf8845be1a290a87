/** The resolved configuration of vmsynth: every key, typed (config-keys.ts says where each comes from). */
import type { Address, ClientCredential } from './config-values.js';

export interface Config {
  listen: Address;
  /** Health and metrics HTTP endpoint; null: off. */
  metricsListen: Address | null;
  /** SHA-256 of the token the live session view (/sessions on metricsListen) needs; null: none. */
  viewTokenSha256: string | null;
  baseDir: string;
  runDir: string;
  keyDir: string;
  cacheDir: string;
  storeDir: string;
  /** The store's cap on segment bytes, MiB; 0: no store. */
  storeMaxMib: number;
  /** Whether segments received from clients enter the store. */
  storeReceived: boolean;
  /** Whether sessions take chunks of other overlays from the store (chunk lookaside, for clients that offer it). */
  storeLookaside: boolean;
  /** An S3-compatible endpoint (MinIO, Ceph RGW); null: AWS S3. */
  s3Endpoint: string | null;
  /** null: the SDK's (AWS_REGION, ~/.aws/config), else us-east-1. */
  s3Region: string | null;
  /** Object store locations clients may name their overlay by (s3://bucket/prefix); empty: none. */
  s3Sources: string[];
  s3TimeoutS: number;
  /** Ranged GETs at once per session. */
  s3Parallel: number;
  libvirtUri: string;
  /** Public key files trusted besides `keyDir`/trusted. */
  trust: string[];
  /** Empty: no authentication (only sensible on loopback). */
  clients: ClientCredential[];
  tlsCert: string | null;
  tlsKey: string | null;
  maxSessions: number;
  maxSessionsPerClient: number;
  /** Guest RAM plus in-flight segment bytes one session may pin, MiB. */
  sessionMemoryMib: number;
  maxInFlightKib: number;
  threads: number;
  /** New connections per minute from one address. */
  connectionsPerMinute: number;
  handshakeTimeoutS: number;
  /** How long a session whose connection dropped waits for a resume; 0: it ends at the drop. */
  graceS: number;
  /** Sessions outlive the server: a keeper process per session; a stop or crash leaves the VMs for the next server to adopt. */
  keepSessions: boolean;
  /** Announce this cloudlet with DNS-SD (_vmsynth._tcp) on the local network. */
  announce: boolean;
  /** The address of the interface announcements and discovery use; null: the system's default. */
  announceInterface: string | null;
  /** The token this cloudlet presents to the target of a handoff (one of the target's clients); null: none. */
  handoffToken: string | null;
  /** Cloudlets `vmsynth discover` asks besides those it finds announced. */
  cloudlets: Address[];
  keepaliveS: number;
  idleS: number;
  maxOffloadsInFlight: number;
  /** Bytes all connections together may buffer before their session starts, MiB. */
  preSessionMemoryMib: number;
  /** How long SIGTERM waits for sessions to tear down before forcing. */
  gracefulStopS: number;
  logLevel: 'debug' | 'info' | 'warn' | 'error' | 'silent';
  logFormat: 'json' | 'text';
}
