/**
 * `vmsynth store ls | stats | pin | unpin | gc | verify`: the cloudlet store
 * (config keys storeDir, storeMaxMib) as ops see it. Each command opens the
 * store itself; a running server shares it (SQLite in WAL mode), and its
 * sessions' leases keep what they use from `gc`.
 */
import type { Command } from 'commander';
import { resolveConfig } from '../core/config.js';
import { storeDir } from '../core/paths.js';
import type { SegmentStore } from '../store/segment-store.js';
import { bytes, table } from './format.js';
import { progressBar, type Progress } from './progress.js';
import { nonNegativeInt, runCommand } from './run.js';

async function withStore<T>(fn: (store: SegmentStore) => Promise<T>): Promise<T> {
  const { SegmentStore } = await import('../store/segment-store.js');
  const cfg = resolveConfig().config;
  const store = await SegmentStore.open({ dir: storeDir(), maxBytes: cfg.storeMaxMib * 2 ** 20 });
  try {
    return await fn(store);
  } finally {
    store.close();
  }
}

const when = (t: number) => new Date(t).toISOString().replace(/\.\d+Z$/, 'Z');

export function registerStoreCommands(program: Command): void {
  const store = program
    .command('store')
    .description(
      'The cloudlet store: segments of overlays synthesized here, kept (up to storeMaxMib, least recently used out first) so the next synthesis of the same overlay takes them locally instead of over the client link.',
    );

  store
    .command('ls')
    .description(
      'List the overlays the store knows: id, base, signing key, how much of each is stored, pinned, last use.',
    )
    .option('--json', 'print the list as JSON')
    .action(async (o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) =>
        withStore(async (s) => {
          const rows = s.overlays();
          if (!json) {
            if (rows.length === 0) console.log(`the store (${s.dir}) holds no overlays`);
            for (const r of rows)
              console.log(
                `${r.id.slice(0, 16)}  base ${r.base}  key ${r.keyId}  ${r.present}/${r.segments} segments (${bytes(r.presentBytes)} of ${bytes(r.bytes)})${r.pinned ? '  pinned' : ''}${r.leases ? `  in use by ${r.leases} session(s)` : ''}  used ${when(r.usedAt)}`,
              );
          }
          return { dir: s.dir, overlays: rows };
        }),
      ),
    );

  store
    .command('stats')
    .description(
      'Size, cap, hit ratio, bytes saved, chunk lookaside, evictions and dropped entries (counted since the store was made).',
    )
    .option('--json', 'print the numbers as JSON')
    .action(async (o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) =>
        withStore(async (s) => {
          const st = s.stats();
          if (!json)
            console.log(
              table([
                ['store', st.dir],
                ['size', `${bytes(st.bytes)} of ${bytes(st.maxBytes)} in ${st.segments} segments`],
                ['overlays', `${st.overlays} (${st.pinned} pinned)`],
                [
                  'hit ratio',
                  st.hitRatio === null
                    ? 'no lookups yet'
                    : `${(st.hitRatio * 100).toFixed(1)}% (${st.hits} hits, ${st.misses} misses)`,
                ],
                ['bytes saved', bytes(st.bytesSaved)],
                [
                  'chunk lookaside',
                  `${st.chunks} chunks named; ${st.chunkHits} taken from the store (${bytes(st.chunkBytesSaved)} of payload)`,
                ],
                ['evictions', `${st.evictions} (${bytes(st.evictedBytes)})`],
                ['dropped', `${st.dropped} (failed their check, or their file was gone)`],
              ]),
            );
          return st;
        }),
      ),
    );

  for (const [name, pinned] of [
    ['pin', true],
    ['unpin', false],
  ] as const) {
    store
      .command(name)
      .description(
        pinned
          ? 'Keep an overlay: its stored segments are never evicted (an id prefix of 8+ hex digits from `store ls`).'
          : 'Let an overlay be evicted again.',
      )
      .argument('<overlay>', 'overlay id, or a prefix of 8 or more hex digits')
      .option('--json', 'print { id, pinned } as JSON')
      .action(async (prefix: string, o: { json?: boolean }) =>
        runCommand(!!o.json, async ({ json }) =>
          withStore(async (s) => {
            const id = s.pin(prefix, pinned);
            if (!json) console.log(`${pinned ? 'pinned' : 'unpinned'} ${id}`);
            return { id, pinned };
          }),
        ),
      );
  }

  store
    .command('gc')
    .description(
      'Evict down to the cap (or --target-mib), least recently used first and never what is pinned or in use; remove files the index does not know and overlays with nothing stored.',
    )
    .option('--target-mib <n>', 'evict down to this many MiB instead of storeMaxMib', nonNegativeInt('--target-mib'))
    .option('--json', 'print what was removed as JSON')
    .action(async (o: { targetMib?: number; json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) =>
        withStore(async (s) => {
          const r = await s.gc(o.targetMib === undefined ? undefined : o.targetMib * 2 ** 20);
          if (!json)
            console.log(
              `evicted ${r.evicted} segment(s) (${bytes(r.evictedBytes)}), removed ${r.orphanFiles} unindexed file(s) and ${r.overlaysRemoved} empty overlay record(s); the store holds ${bytes(s.stats().bytes)}`,
            );
          return r;
        }),
      ),
    );

  store
    .command('verify')
    .description(
      'Read every stored segment and check it against its SHA-256; entries that fail are dropped (the next synthesis fetches them again). Exits 0 either way; --json lists what was dropped.',
    )
    .option('--json', 'print { checked, bytes, dropped } as JSON')
    .action(async (o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) =>
        withStore(async (s) => {
          let bar = null as Progress | null;
          const r = await s.verify((done, total) => {
            bar ??= progressBar({ label: 'verifying', total, unit: 'count', enabled: !json });
            bar.update(done);
          });
          bar?.stop();
          if (!json) {
            console.log(
              `checked ${r.checked} segment(s), ${bytes(r.bytes)}: ${r.dropped.length ? `${r.dropped.length} failed and were dropped: ${r.dropped.join(', ')}` : 'all good'}`,
            );
          }
          return r;
        }),
      ),
    );
}
