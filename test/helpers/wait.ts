/**
 * Waiting in tests for something that happens on its own time (a teardown,
 * a held read): poll a condition until it holds or a generous deadline
 * passes. The deadline only bounds a failure; a pass returns at once.
 */

/** Polls `cond` every `every` ms until it holds; throws naming `what` after `ms`. */
export async function until(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 30_000,
  every = 10,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/**
 * Until a server has no connection and no session left (a session is torn down after its client
 * was told how it ended, and a session whose connection dropped waits out its grace period).
 */
export function drained(server: { connectionCount: number; sessionCount: number }, ms = 30_000): Promise<void> {
  return until(
    () => server.connectionCount === 0 && server.sessionCount === 0,
    'the server to close every connection and session',
    ms,
    25,
  );
}
