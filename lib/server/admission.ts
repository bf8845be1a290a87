/**
 * Admission: whether an authenticated client may open a session, and over
 * what. In order: the server's session limit (VMS_BUSY), the client's
 * (VMS_LIMIT), the manifest (signed by a trusted key, well formed), the base
 * it was made against (present here), the memory the session would pin
 * (VMS_LIMIT), the base's files (hashed once per server) and the host's
 * accelerator (the base's). Every check that needs the host goes through
 * AdmissionHost, so the rules are testable without libvirt or bases.
 */
import { DEFAULTS } from '../core/defaults.js';
import { VmsynthError } from '../core/errors.js';
import { Overlay } from '../overlay/reader.js';
import type { Base, BaseImages } from '../vm/base.js';

/** What admission lets a session run on. */
export interface Admitted {
  overlay: Overlay;
  base: Base;
}

export interface AdmissionLimits {
  /** Sessions at once (the one being admitted included). */
  maxSessions: number;
  /** Sessions at once per client name; checked only when clients authenticate. */
  maxSessionsPerClient: number | null;
  /** Guest RAM plus in-flight segment bytes one session may pin; null: no limit. */
  sessionMemoryBytes: number | null;
  /** Background segment bytes a session asks for and has not applied, at most. */
  maxInFlightBytes: number;
}

/** The host as admission sees it. */
export interface AdmissionHost {
  /** Trusted overlay signing keys by id. */
  trusted: Map<string, Buffer>;
  /** Whether clients authenticate (per-client limits apply only then). */
  authRequired: boolean;
  /** Sessions running or starting now, all or one client's (the one being admitted included). */
  sessions(client?: string): number;
  /** The local base with these images (VMS_BASE_NOT_FOUND otherwise). */
  findBase(images: BaseImages): Promise<Base>;
  /** Resolves when the base's files hash as its manifest says. */
  checkBase(base: Base): Promise<void>;
  /** Resolves when this host runs the accelerator the base was captured under (VMS_ACCEL_MISMATCH otherwise). */
  checkAccel(base: Base): Promise<void>;
}

/** The limits a server applies when its options leave them out. */
export function defaultLimits(): AdmissionLimits {
  return {
    maxSessions: DEFAULTS.maxSessions,
    maxSessionsPerClient: DEFAULTS.maxSessionsPerClient,
    sessionMemoryBytes: DEFAULTS.sessionMemoryMib * 2 ** 20,
    maxInFlightBytes: DEFAULTS.maxInFlightKib * 1024,
  };
}

export class Admission {
  constructor(
    private readonly limits: AdmissionLimits,
    private readonly host: AdmissionHost,
  ) {}

  /** The overlay and base `client`'s session over `manifest` runs on, or the typed reason it may not start. */
  async admit(client: string, manifest: Buffer): Promise<Admitted> {
    const { limits, host } = this;
    if (host.sessions() > limits.maxSessions) {
      throw new VmsynthError('VMS_BUSY', `this server runs its limit of ${limits.maxSessions} sessions`, {
        details: { limit: 'maxSessions', max: limits.maxSessions },
      });
    }
    const perClient = limits.maxSessionsPerClient;
    if (perClient !== null && host.authRequired && host.sessions(client) > perClient) {
      throw new VmsynthError('VMS_LIMIT', `client "${client}" already runs its limit of ${perClient} sessions`, {
        details: { limit: 'maxSessionsPerClient', client, max: perClient },
      });
    }
    const overlay = Overlay.fromManifest(manifest, { trusted: host.trusted });
    const base = await host.findBase(overlay.body.base);
    const memory = base.manifest.memory.bytes + limits.maxInFlightBytes;
    if (limits.sessionMemoryBytes !== null && memory > limits.sessionMemoryBytes) {
      const mib = (n: number) => Math.ceil(n / 2 ** 20);
      throw new VmsynthError(
        'VMS_LIMIT',
        `the session would use ${mib(memory)} MiB (guest RAM + in-flight segments), over this server's limit of ${Math.floor(limits.sessionMemoryBytes / 2 ** 20)} MiB per session`,
        {
          details: { limit: 'sessionMemory', bytes: memory, max: limits.sessionMemoryBytes },
        },
      );
    }
    await host.checkBase(base);
    await host.checkAccel(base);
    return { overlay, base };
  }
}
