/**
 * Named diagnostics_channel events of the vmsynth core.
 *
 * The core publishes facts here and never imports a logger; the CLI's logger,
 * tests and the server's Prometheus metrics (server/metrics.ts) subscribe.
 * Channel names are stable.
 */
import diagnostics from 'node:diagnostics_channel';

export const channels = {
  /** { accel, reason } — which accelerator this host uses. */
  accel: diagnostics.channel('vmsynth:vm:accel'),
  /** { name, pid } — a domain was created (paused or booting). */
  domainCreated: diagnostics.channel('vmsynth:vm:created'),
  /** { name, ms } — the domain reached "running". */
  domainRunning: diagnostics.channel('vmsynth:vm:running'),
  /** { name } — the domain was destroyed. */
  domainDestroyed: diagnostics.channel('vmsynth:vm:destroyed'),
  /** { mountpoint } */
  fuseMounted: diagnostics.channel('vmsynth:fs:mounted'),
  /** { mountpoint, forced } */
  fuseUnmounted: diagnostics.channel('vmsynth:fs:unmounted'),
  /** { path, offset, length, error } — a FUSE read failed and was answered with EIO. */
  fuseReadFailed: diagnostics.channel('vmsynth:fs:read-failed'),
  /** { session, pid, ms, spare } — a keeper process serves a session's images (ms: from asking; spare: a spare started ahead took it). */
  keeperStarted: diagnostics.channel('vmsynth:synth:keeper-started'),
  /** { session, domain, keeperPid, resumedMs, segmentsApplied } — a starting server took over a session a previous one left to its keeper. */
  sessionAdopted: diagnostics.channel('vmsynth:server:session-adopted'),
  /** { session, pid } — a stopping server left a session to its keeper (a later server adopts it within its grace period). */
  sessionLeft: diagnostics.channel('vmsynth:server:session-left'),
  /** { kind, what } — stale state from a crashed run was removed. */
  staleCleaned: diagnostics.channel('vmsynth:janitor:cleaned'),
  /** { step, detail? } — progress of long work (guest build, base capture). */
  progress: diagnostics.channel('vmsynth:progress'),
  /** { session, peer, policy, base, segments } — a synthesis session was accepted. */
  sessionStarted: diagnostics.channel('vmsynth:server:session-started'),
  /** { session, peer, stats, error? } — a synthesis session ended and was torn down. */
  sessionEnded: diagnostics.channel('vmsynth:server:session-ended'),
  /** { session, role: 'source' | 'target', peer, step, ms?, detail?, error? } — a step of a handoff to or from another cloudlet. */
  handoff: diagnostics.channel('vmsynth:server:handoff'),
  /** { session, peer, graceMs, error } — a session's connection dropped; the session waits graceMs for a resume. */
  sessionDetached: diagnostics.channel('vmsynth:server:session-detached'),
  /** { session, peer, resumes } — a client resumed its session over a new connection. */
  sessionReattached: diagnostics.channel('vmsynth:server:session-reattached'),
  /** { session, id, method, path } — an offload request went to the app in the VM (once per request id). */
  offloadForwarded: diagnostics.channel('vmsynth:server:offload-forwarded'),
  /** { session, domain, ms, policy } — the session's VM is running. */
  sessionResumed: diagnostics.channel('vmsynth:server:session-resumed'),
  /** { session, ms, policy } — the app's first answer (ms from session start). */
  firstResponse: diagnostics.channel('vmsynth:server:first-response'),
  /** { session, ms } — every overlay segment of the session is applied. */
  overlayComplete: diagnostics.channel('vmsynth:server:overlay-complete'),
  /** { session, index, bytes, lane } — a segment was verified and applied. */
  segmentApplied: diagnostics.channel('vmsynth:server:segment-applied'),
  /** { session, segment, outOfOrder } — a guest read put a segment on the demand lane (outOfOrder: it was already on its way in the background). */
  demandFetch: diagnostics.channel('vmsynth:server:demand-fetch'),
  /** { session, ms } — a guest read held for a missing chunk went on. */
  readUnblocked: diagnostics.channel('vmsynth:server:read-unblocked'),
  /** { session, domain, error } — the session's VM died while the session ran. */
  vmDied: diagnostics.channel('vmsynth:server:vm-died'),
  /** { peer, client, code, message } — a connection was refused or failed before its session started. */
  connectionRefused: diagnostics.channel('vmsynth:server:connection-refused'),
  /** { base, ok, ms?, error? } — a base was hashed against its manifest at server start. */
  baseChecked: diagnostics.channel('vmsynth:server:base-checked'),
  /** { host, port } — the server is accepting connections. */
  serverListening: diagnostics.channel('vmsynth:server:listening'),
  /** { session, segment, bytes } — a session took a segment from the cloudlet store instead of asking its client. */
  storeHit: diagnostics.channel('vmsynth:store:hit'),
  /** { session, segment, chunks, bytes } — chunk lookaside: a thin segment was applied, `chunks` of its payloads (`bytes`) taken from stored segments. */
  storeChunkHit: diagnostics.channel('vmsynth:store:chunk-hit'),
  /** { session, segments } — segments a session had to ask its client for (not in the store). */
  storeMiss: diagnostics.channel('vmsynth:store:miss'),
  /** { sha256, bytes } — a segment entered the store. */
  storeAdded: diagnostics.channel('vmsynth:store:added'),
  /** { sha256, bytes } — the store evicted a segment (LRU, to stay under its cap). */
  storeEvicted: diagnostics.channel('vmsynth:store:evicted'),
  /** { sha256, reason } — a store entry failed its check (or its file was gone) and was dropped. */
  storeDropped: diagnostics.channel('vmsynth:store:dropped'),
  /** { session, url, segment, reason, error } — a session's object store failed (reason: not-found, denied, timeout, unreachable, corrupt, error); the client's connection serves the rest. */
  objectStoreFallback: diagnostics.channel('vmsynth:store:object-fallback'),
  /** { session, segment, afterMs } — a guest read waited on the object store for `afterMs` ms: its segment is asked of the client too, and the first copy to come is used. */
  objectStoreHedge: diagnostics.channel('vmsynth:store:object-hedge'),
  /** { what, error } — a cleanup step failed (it is logged, never thrown). */
  cleanupFailed: diagnostics.channel('vmsynth:cleanup:failed'),
} as const;

export type ChannelName = keyof typeof channels;

export function publish(name: ChannelName, message: Record<string, unknown>): void {
  const ch = channels[name];
  if (ch.hasSubscribers) ch.publish(message);
}
