/**
 * A cloudlet for the handoff bench and tests: `vmsynth serve` as a child
 * process with a run directory and store of its own, in the host's network
 * namespace or (with `ns`) in one made by bench/lib/topology.ts, entered
 * with `nsenter --net` (the network namespace only: its FUSE mounts stay
 * visible to QEMU). Its stop (SIGTERM, then waiting for the exit) is
 * deferred on the caller's scope.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { packageRoot } from '../../lib/core/paths.js';
import type { Scope } from '../../lib/core/scope.js';
import { stopWith } from './child-io.js';
import { netnsPath } from './topology.js';

export const VMSYNTH_CLI = path.join(packageRoot(), 'dist', 'lib', 'cli', 'entry.cjs');

export interface CloudletServer {
  /** HOST:PORT it listens on. */
  addr: string;
  runDir: string;
  /** The environment it runs with (a `vmsynth handoff` for it needs its VMSYNTH_RUN_DIR). */
  env: NodeJS.ProcessEnv;
  child: ChildProcess;
  /** SIGTERM, then the exit (as the scope's step does; idempotent). */
  stop(): Promise<void>;
}

export interface CloudletOptions {
  /** A name for its directories and messages. */
  name: string;
  /** Where its run directory and store go. */
  dir: string;
  listen: { host: string; port: number };
  /** The network namespace to run in (`ip netns` name); default the host's. */
  ns?: string;
  /** More environment (tokens, trust, a base directory, announcing). */
  env?: NodeJS.ProcessEnv;
}

/** Starts `vmsynth serve`; resolves once it listens. */
export async function startCloudlet(scope: Scope, o: CloudletOptions): Promise<CloudletServer> {
  const runDir = path.join(o.dir, `run-${o.name}`);
  const env = {
    ...process.env,
    VMSYNTH_RUN_DIR: runDir,
    VMSYNTH_STORE_DIR: path.join(o.dir, `store-${o.name}`),
    LOG_FORMAT: 'json',
    LOG_LEVEL: 'info',
    ...o.env,
  };
  const args = [VMSYNTH_CLI, 'serve', '--listen', `${o.listen.host}:${o.listen.port}`, '--no-verify-bases', '--json'];
  const child = o.ns
    ? spawn('nsenter', [`--net=${netnsPath(o.ns)}`, process.execPath, ...args], {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      })
    : spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const stop = stopWith(scope, `vmsynth serve ${o.name}`, child);
  // Its log's tail, for the error if it never listens (all of it would grow for as long as it runs).
  let out = '';
  let listening = false;
  child.stderr.on('data', () => undefined);
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      if (listening) return;
      out = (out + d.toString()).slice(-4000);
      if (out.includes('"listening"')) {
        listening = true;
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`vmsynth serve ${o.name} exited ${code}: ${out.slice(-1500)}`)));
  });
  return { addr: `${o.listen.host}:${o.listen.port}`, runDir, env, child, stop };
}
