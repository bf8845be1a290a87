/**
 * Named diagnostics_channel events of the vmsynth core.
 *
 * The core publishes facts here and never imports a logger; the CLI's logger,
 * tests and (later) metrics subscribe. Channel names are stable.
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
  /** { kind, what } — stale state from a crashed run was removed. */
  staleCleaned: diagnostics.channel('vmsynth:janitor:cleaned'),
  /** { step, detail? } — progress of long work (guest build, base capture). */
  progress: diagnostics.channel('vmsynth:progress'),
  /** { session, peer, policy, base, segments } — a synthesis session was accepted. */
  sessionStarted: diagnostics.channel('vmsynth:server:session-started'),
  /** { session, peer, stats, error? } — a synthesis session ended and was torn down. */
  sessionEnded: diagnostics.channel('vmsynth:server:session-ended'),
  /** { host, port } — the server is accepting connections. */
  serverListening: diagnostics.channel('vmsynth:server:listening'),
  /** { what, error } — a cleanup step failed (it is logged, never thrown). */
  cleanupFailed: diagnostics.channel('vmsynth:cleanup:failed'),
} as const;

export type ChannelName = keyof typeof channels;

export function publish(name: ChannelName, message: Record<string, unknown>): void {
  const ch = channels[name];
  if (ch.hasSubscribers) ch.publish(message);
}
