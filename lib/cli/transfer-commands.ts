/**
 * `vmsynth overlay push`, `vmsynth base push` and `vmsynth base pull`: overlays
 * and bases to and from an S3-compatible object store (lib/offline/transfer.ts),
 * with the endpoint, region and timeout from config (s3Endpoint, s3Region,
 * s3TimeoutS) and credentials the standard AWS way.
 */
import type { Command } from 'commander';
import { resolveConfig } from '../core/config.js';
import type { TransferOptions } from '../offline/transfer.js';
import { bytes } from './format.js';
import { progressBar, type Progress } from './progress.js';
import { runCommand } from './run.js';

/** The object store from config, and a progress bar on a terminal. */
async function transferOptions(json: boolean, signal: AbortSignal): Promise<TransferOptions & { close(): void }> {
  const { ObjectStore } = await import('../store/object-store.js');
  const cfg = resolveConfig().config;
  const objects = new ObjectStore({
    endpoint: cfg.s3Endpoint,
    ...(cfg.s3Region ? { region: cfg.s3Region } : {}),
    timeoutMs: cfg.s3TimeoutS * 1000,
  });
  // One bar per file, replaced when the next file starts.
  let bar: { file: string; p: Progress } | null = null;
  return {
    objects,
    signal,
    onProgress: (file, done, total) => {
      if (bar?.file !== file) {
        bar?.p.stop();
        bar = { file, p: progressBar({ label: file, total, unit: 'bytes', enabled: !json }) };
      }
      bar.p.update(done);
    },
    close: () => {
      bar?.p.stop();
      objects.close();
    },
  };
}

function command(parent: Command, name: string): Command {
  const found = parent.commands.find((c) => c.name() === name);
  if (!found) throw new Error(`no "${name}" command to add to`);
  return found;
}

export function registerTransferCommands(program: Command): void {
  command(program, 'overlay')
    .command('push')
    .description(
      'Upload an overlay to an object store (S3, MinIO, Ceph RGW): s3://BUCKET/PREFIX then holds overlay.segments and overlay.manifest, and a client can name it with `vmsynth synth --overlay-url` so the server fetches segments over its own link.',
    )
    .argument('<dir>', 'overlay directory')
    .argument('<url>', 's3://BUCKET/PREFIX')
    .option('--json', 'print { url, bytes } as JSON')
    .action(async (dir: string, url: string, o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json, signal }) => {
        const { pushOverlay } = await import('../offline/transfer.js');
        const t = await transferOptions(json, signal);
        try {
          const r = await pushOverlay(dir, url, t);
          if (!json) console.log(`pushed ${bytes(r.bytes)} to ${r.url}`);
          return r;
        } finally {
          t.close();
        }
      }),
    );

  const base = command(program, 'base');
  base
    .command('push')
    .description('Upload a local base (its five files, then manifest.json) to an object store.')
    .argument('<name>', 'base name')
    .argument('<url>', 's3://BUCKET/PREFIX')
    .option('--json', 'print { url, bytes } as JSON')
    .action(async (name: string, url: string, o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json, signal }) => {
        const { pushBase } = await import('../offline/transfer.js');
        const t = await transferOptions(json, signal);
        try {
          const r = await pushBase(name, url, t);
          if (!json) console.log(`pushed base "${name}" (${bytes(r.bytes)}) to ${r.url}`);
          return r;
        } finally {
          t.close();
        }
      }),
    );
  base
    .command('pull')
    .description(
      'Download a base from an object store into the base directory; it is hashed against its manifest before it appears there.',
    )
    .argument('<url>', 's3://BUCKET/PREFIX')
    .option('--name <name>', 'local name (default: the name in its manifest)')
    .option('--force', 'replace a local base of that name')
    .option('--json', 'print { name, dir, bytes } as JSON')
    .action(async (url: string, o: { name?: string; force?: boolean; json?: boolean }) =>
      runCommand(!!o.json, async ({ json, signal }) => {
        const { pullBase } = await import('../offline/transfer.js');
        const t = await transferOptions(json, signal);
        try {
          const r = await pullBase(url, { ...t, ...(o.name ? { name: o.name } : {}), force: !!o.force });
          if (!json) console.log(`pulled base "${r.name}" (${bytes(r.bytes)}) into ${r.dir}, hashes checked`);
          return r;
        } finally {
          t.close();
        }
      }),
    );
}
