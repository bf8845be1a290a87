/**
 * A starting server takes over the sessions a previous one left to their
 * keepers (synth/keeper.ts): after a crash, a restart or an upgrade, each
 * run directory with a live keeper and the records a session keeps becomes
 * a served session again, waiting out its grace period for its client to
 * resume it. The overlay's manifest is checked again against the keys
 * trusted now. A session that cannot be adopted is ended: its keeper is
 * told to stop (SIGTERM), and it destroys the VM and removes the files.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { runDir } from '../core/paths.js';
import { Overlay } from '../overlay/reader.js';
import { MANIFEST_FILE, readRecord, SYNTH_RECORD, writeRecord, type SynthRecord } from '../synth/session-record.js';
import type { Base } from '../vm/base.js';
import type { SessionRequest } from './context.js';
import { KEEPER_FILE, OWNER_FILE, ownerAlive, readOwner } from '../vm/run-dir.js';
import { ServedSession, type ServedRecord } from './served-session.js';
import type { SessionHandle } from './session-handle.js';
import type { SessionRegistry } from './session-registry.js';

/** The served session's record in the run directory (ServedRecord). */
export const SERVED_RECORD = 'served.json';

export interface AdoptionHost {
  trusted: Map<string, Buffer>;
  findBase(ref: Overlay['body']['base']): Promise<Base>;
  /** Starts the synthesis session of an adopted one (SynthSession.start with `adopt`). */
  start(req: SessionRequest, id: string, record: SynthRecord): Promise<SessionHandle>;
  registry: SessionRegistry;
  graceMs: number;
  maxOffloads: number;
}

/** Writes the served session's record into its run directory, for adoption. */
export function keepServed(served: ServedSession): Promise<void> {
  return writeRecord(path.join(runDir(), served.id), SERVED_RECORD, served.record());
}

/** Adopts every session a previous server left to its keeper; returns the ids adopted and those ended. */
export async function adoptSessions(host: AdoptionHost): Promise<{ adopted: string[]; ended: string[] }> {
  const out = { adopted: [] as string[], ended: [] as string[] };
  const root = runDir();
  for (const id of await fsp.readdir(root).catch(() => [] as string[])) {
    const dir = path.join(root, id);
    if (!/^[0-9a-f]{12}$/.test(id)) continue;
    // Read once: a failed adoption may remove the run directory with the keeper's record.
    const keeper = await readOwner(path.join(dir, KEEPER_FILE));
    if (!keeper || !(await ownerAlive(keeper))) continue;
    // Another server of this run directory still serves it (two instances sharing one is a config error).
    const owner = await readOwner(path.join(dir, OWNER_FILE));
    if (owner && (await ownerAlive(owner))) continue;
    try {
      await adoptOne(host, id, dir);
      out.adopted.push(id);
    } catch (err) {
      const error = asVmsynthError(err);
      publish('sessionEnded', { session: id, peer: '', client: '', stats: {}, error });
      if (await ownerAlive(keeper)) stopKeeper(keeper.pid);
      out.ended.push(id);
    }
  }
  return out;
}

async function adoptOne(host: AdoptionHost, id: string, dir: string): Promise<void> {
  const served = await readRecord<ServedRecord>(dir, SERVED_RECORD);
  const synth = await readRecord<SynthRecord>(dir, SYNTH_RECORD);
  const manifest = await fsp.readFile(path.join(dir, MANIFEST_FILE)).catch(() => null);
  if (!served || !synth || !manifest)
    throw new VmsynthError('VMS_SESSION_GONE', `session ${id} left no record to adopt it by (it had not started yet)`);
  const overlay = Overlay.fromManifest(manifest, { trusted: host.trusted });
  const base = await host.findBase(overlay.body.base);
  const s = new ServedSession({
    client: served.client,
    policy: served.policy,
    base: served.base,
    segments: served.segments,
    graceMs: host.graceMs,
    maxOffloads: host.maxOffloads,
    onEnded: (x, error) => host.registry.remove(x, error),
    secretSha256: Buffer.from(served.secretSha256, 'hex'),
    manifest,
    ...(synth.overlayUrl !== undefined ? { overlayUrl: synth.overlayUrl } : {}),
  });
  const handle = await host.start(
    {
      overlay,
      base,
      policy: served.policy,
      events: s.events,
      manifest,
      lookaside: synth.lookaside,
      ...(synth.overlayUrl !== undefined ? { overlayUrl: synth.overlayUrl } : {}),
    },
    id,
    synth,
  );
  s.adopt(handle);
  host.registry.add(s);
  publish('sessionAdopted', {
    session: id,
    domain: handle.domain,
    client: served.client,
    resumedMs: synth.resumedMs,
    appliedMs: synth.completeMs,
  });
}

/** Ends a keeper that cannot be adopted: on SIGTERM it destroys the VM and removes the files. */
function stopKeeper(pid: number): void {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    // gone already
  }
}
