/**
 * The test guest's counter (`/state?add=1`, guest/app-state.c) through a
 * client session, for the handoff tests: state built by a few requests,
 * then a stream of requests that each add 1 until stopped, so that the
 * app's count after a move says whether each request ran exactly once.
 */
import type { ClientSession } from '../../lib/client/session.js';

export interface CounterApp {
  /** One `/state?QUERY` request; the app's count after it. */
  add(query: string): Promise<{ count: number }>;
  /** Runs `n` requests that build state (each adds 1 and writes `query`'s pages and blocks). */
  build(n: number, query: string): Promise<void>;
  /** Starts `streams` loops of `add=1`, one request at a time each; stop() resolves with every add answered so far. */
  stream(streams?: number): { stop(): Promise<number> };
}

export function counterApp(s: ClientSession): CounterApp {
  let added = 0;
  const add = async (query: string) => {
    const r = await s.offload({ method: 'GET', path: `/state?${query}` });
    if (r.status !== 200) throw new Error(`${r.status} ${r.body.toString()}`);
    if (/^add=1(&|$)/.test(query)) added++;
    return JSON.parse(r.body.toString()) as { count: number };
  };
  return {
    add,
    async build(n, query) {
      for (let i = 0; i < n; i++) await add(`add=1&${query}`);
    },
    stream(streams = 1) {
      let on = true;
      const loops = Promise.all(
        Array.from({ length: streams }, async () => {
          while (on) await add('add=1');
        }),
      );
      return {
        async stop() {
          on = false;
          await loops;
          return added;
        },
      };
    },
  };
}
