/**
 * `vmsynth key …` and `vmsynth overlay …`: signing keys, and creating,
 * inspecting, verifying and applying VM overlays. Thin wrappers over
 * lib/overlay.
 */
import { promises as fsp } from 'node:fs';
import type { Command } from 'commander';
import { VmsynthError } from '../core/errors.js';
import { keyDir } from '../core/paths.js';
import { KIND_NAMES } from '../overlay/format.js';
import type { OverlayReport } from '../overlay/inspect.js';
import type { Copy } from '../vm/customize.js';
import { bytes, ms, table } from './format.js';
import { nonNegativeInt, positiveInt, runCommand } from './run.js';

const collect = (v: string, prev: string[]) => [...prev, v];

function parseCopy(spec: string): Copy {
  const i = spec.lastIndexOf(':');
  if (i <= 0 || !spec.slice(i + 1).startsWith('/'))
    throw new VmsynthError('VMS_USAGE', `--copy "${spec}" must be HOSTFILE:/absolute/guest/path`);
  return { src: spec.slice(0, i), dest: spec.slice(i + 1) };
}

/** The options of every command that works on an overlay over a local base (profile, verify, apply). */
interface OverOverlay {
  base?: string;
  trust: string[];
  threads: number;
  json?: boolean;
}

export function registerOverlayCommands(program: Command): void {
  const key = program.command('key').description(`Ed25519 keys that sign overlays (kept in ${keyDir()}).`);
  key
    .command('generate')
    .description('Create a signing key pair, and trust its public key on this host.')
    .option('--json', 'print the result as JSON')
    .action(async (o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        const { generateKey } = await import('../overlay/keys.js');
        const k = await generateKey();
        if (!json)
          console.log(
            `key ${k.keyId}\n${table([
              ['private key', k.privateKeyFile],
              ['public key', k.publicKeyFile],
              ['trusted as', k.trustedFile],
            ])}`,
          );
        return k;
      }),
    );
  key
    .command('trust')
    .description('Trust overlays signed by the key whose public key (PEM) is in FILE.')
    .argument('<file>', 'public key file')
    .option('--json', 'print the result as JSON')
    .action(async (file: string, o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        const { trustKey } = await import('../overlay/keys.js');
        const keyId = await trustKey(file);
        if (!json) console.log(`trusting key ${keyId}`);
        return { keyId };
      }),
    );

  const overlay = program.command('overlay').description('VM overlays: what a mobile app ships instead of a whole VM.');
  overlay
    .command('create')
    .description(
      'Resume a base on a writable copy, customize it (copy files in, run a script), suspend it, and build a signed overlay against the base.',
    )
    .requiredOption('--base <name>', 'base name or directory')
    .requiredOption('--out <dir>', 'overlay directory to write')
    .option('--customize <script>', 'shell script run in the guest with /bin/sh')
    .option('--copy <src:dest>', 'copy a host file into the guest before the script (repeatable)', collect, [])
    .option('--key <file|id>', 'signing key (default: the only key in the key directory)')
    .option('--segment-kib <n>', 'segment size (payload bytes before compression)', positiveInt('--segment-kib'), 1024)
    .option('--zstd-level <n>', 'zstd compression level', positiveInt('--zstd-level'), 3)
    .option('--no-drop-caches', 'keep the guest page cache (by default it is dropped before the save)')
    .option(
      '--no-report-free-pages',
      'let free page reporting return only 4 MiB blocks (by default free pages of every size read as zeros)',
    )
    .option('--keep-custom <dir>', 'keep the custom VM images (memory.raw, disk.raw, device.state) in this directory')
    .option(
      '--timeout <seconds>',
      'how long the script may run and the app may take to answer',
      positiveInt('--timeout'),
      300,
    )
    .option('--force', 'replace an existing output directory')
    .option('--json', 'print the result as JSON')
    .action(
      async (o: {
        base: string;
        out: string;
        customize?: string;
        copy: string[];
        key?: string;
        segmentKib: number;
        zstdLevel: number;
        dropCaches: boolean;
        reportFreePages: boolean;
        keepCustom?: string;
        timeout: number;
        force?: boolean;
        json?: boolean;
      }) =>
        runCommand(!!o.json, async ({ signal, json }) => {
          const copies = o.copy.map(parseCopy);
          const script = o.customize
            ? await fsp.readFile(o.customize, 'utf8').catch((e: NodeJS.ErrnoException) => {
                throw new VmsynthError('VMS_USAGE', `cannot read --customize ${o.customize}: ${e.code}`);
              })
            : undefined;
          if (!script && copies.length === 0)
            throw new VmsynthError('VMS_USAGE', 'nothing to customize: give --customize SCRIPT and/or --copy SRC:DEST');
          const { createOverlay } = await import('../offline/create.js');
          const r = await createOverlay({
            base: o.base,
            out: o.out,
            script,
            copies,
            key: o.key,
            segmentBytes: o.segmentKib * 1024,
            zstdLevel: o.zstdLevel,
            dropCaches: o.dropCaches,
            reportFreePages: o.reportFreePages,
            keepCustom: o.keepCustom,
            force: o.force,
            timeoutMs: o.timeout * 1000,
            signal,
          });
          const rep = await inspect(r.dir);
          if (!json) {
            console.log(
              `overlay written to ${r.dir} (signed by ${rep.keyId})\n${table([
                [
                  'customize',
                  `resume ${ms(r.custom.ms.resume)}, script ${ms(r.custom.ms.script)}, save ${ms(r.custom.ms.save)}`,
                ],
                ['build', `scan ${ms(r.ms.scan)}, base lookaside ${ms(r.ms.lookaside)}, pack ${ms(r.ms.pack)}`],
                ...reportRows(rep),
              ])}`,
            );
          }
          return { ...rep, ms: r.ms, custom: r.custom };
        }),
    );

  overlay
    .command('profile')
    .description(
      'Learn the access order: synthesize the overlay locally, resume it N times through tracing FUSE images, send the app its first request, record the first touches of disk and memory chunks, merge the runs and re-pack the overlay in that order (signed again).',
    )
    .argument('<dir>', 'overlay directory')
    .requiredOption('--out <dir>', 'directory for the re-packed overlay')
    .option('--runs <n>', 'runs to merge', positiveInt('--runs'), 3)
    .option('--base <name>', 'base (default: the local base with the hashes the overlay names)')
    .option('--key <file|id>', 'signing key (default: the only key in the key directory)')
    .option('--trust <file>', 'also trust this public key file (repeatable)', collect, [])
    .option('--mem-mb <n>', 'first request: MiB of its working set the app touches', nonNegativeInt('--mem-mb'), 0)
    .option('--disk-mb <n>', 'first request: MiB of disk the app reads', nonNegativeInt('--disk-mb'), 0)
    .option(
      '--disk-off-mb <n>',
      'first request: where on the disk it reads, in MiB',
      nonNegativeInt('--disk-off-mb'),
      0,
    )
    .option(
      '--segment-kib <n>',
      "segment size (default: the overlay's own; another size makes the printed before/after prefixes compare different segmentations)",
      positiveInt('--segment-kib'),
    )
    .option('--threads <n>', 'worker threads for the offline synthesis', nonNegativeInt('--threads'), 2)
    .option('--timeout <seconds>', 'per run: how long the app may take to answer', positiveInt('--timeout'), 120)
    .option('--force', 'replace an existing output directory')
    .option('--json', 'print the result as JSON')
    .action(
      async (
        dir: string,
        o: OverOverlay & {
          out: string;
          runs: number;
          key?: string;
          memMb: number;
          diskMb: number;
          diskOffMb: number;
          segmentKib?: number;
          timeout: number;
          force?: boolean;
        },
      ) =>
        runCommand(!!o.json, async ({ signal, json }) => {
          const { profileOverlay } = await import('../offline/profile.js');
          const r = await profileOverlay({
            overlay: dir,
            out: o.out,
            runs: o.runs,
            base: o.base,
            key: o.key,
            trust: o.trust,
            threads: o.threads,
            force: o.force,
            signal,
            work: { memMb: o.memMb, diskMb: o.diskMb, diskOffMb: o.diskOffMb },
            segmentBytes: o.segmentKib && o.segmentKib * 1024,
            timeoutMs: o.timeout * 1000,
          });
          const rep = await inspect(r.dir);
          if (!json) {
            console.log(
              `profiled overlay written to ${r.dir} (${r.runs.length} runs merged, ${r.ranked} chunks ranked)\n${table([
                ...r.runs.map((run, i): [string, string] => [
                  `run ${i + 1}`,
                  `first response ${ms(run.firstResponseMs)}; touched ${run.touches.memory} memory + ${run.touches.disk} disk chunks, ${run.after.chunks} of them in the overlay; in-order stream needed before they were all present: ${bytes(run.before.prefixBytes)} (${run.before.prefixSegments} segments) before, ${bytes(run.after.prefixBytes)} (${run.after.prefixSegments}) after`,
                ]),
                ['rank', r.rank],
                ...reportRows(rep),
              ])}`,
            );
          }
          return { ...rep, profile: { runs: r.runs, ranked: r.ranked, rank: r.rank, ms: r.ms } };
        }),
    );

  overlay
    .command('inspect')
    .description('Show what an overlay holds: bytes by kind, overlay and naive bytes, ratio, segments.')
    .argument('<dir>', 'overlay directory')
    .option('--json', 'print the report as JSON')
    .action(async (dir: string, o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        const rep = await inspect(dir);
        if (!json)
          console.log(
            `overlay ${rep.dir}\n${table([['format', rep.format], ['signed by', `${rep.keyId} (signature checked against the key it names; \`overlay verify\` checks trust)`], ['base', `${rep.base.name}  memory ${rep.base.memorySha256.slice(0, 16)}…  disk ${rep.base.diskSha256.slice(0, 16)}…`], ...reportRows(rep)])}`,
          );
        return rep;
      }),
    );

  overlay
    .command('verify')
    .description('Check an overlay: signature by a trusted key, base match, every segment and every chunk hash.')
    .argument('<dir>', 'overlay directory')
    .option('--base <name>', 'base to check against (default: the local base with the hashes the overlay names)')
    .option('--trust <file>', 'also trust this public key file (repeatable)', collect, [])
    .option(
      '--threads <n>',
      'worker threads that verify and decompress segments (0: all on one thread)',
      nonNegativeInt('--threads'),
      2,
    )
    .option('--json', 'print the result as JSON')
    .action(async (dir: string, o: OverOverlay) =>
      runCommand(!!o.json, async ({ signal, json }) => {
        const { verifyOverlay } = await import('../offline/apply.js');
        const r = await verifyOverlay({ overlay: dir, base: o.base, trust: o.trust, threads: o.threads, signal });
        if (!json)
          console.log(
            `overlay ${r.overlay} is intact: signed by trusted key ${r.keyId}, made against base "${r.base}", ${r.segments} segments and ${r.chunks} chunks checked in ${ms(r.ms)}`,
          );
        return r;
      }),
    );

  overlay
    .command('share')
    .description(
      "How much of overlay B's payload overlay A already holds, by chunk content digest: what a cloudlet holding A could keep off the link when B is synthesized (lookaside).",
    )
    .argument('<a>', 'overlay directory already on the cloudlet')
    .argument('<b>', 'overlay directory to synthesize next')
    .option('--json', 'print the report as JSON')
    .action(async (a: string, b: string, o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        const { overlayShare } = await import('../offline/share.js');
        const r = await overlayShare(a, b);
        if (!json)
          console.log(
            `${r.sharedChunks} of B's ${r.b.payloadChunks} payload chunks (${(r.sharedFraction * 100).toFixed(1)}%) are in A${r.sameBase ? '' : ' (built over another base)'}; ${r.segmentsFullyShared} of its ${r.b.segments} segments (${bytes(r.bytesFullyShared)}) are all in A; chunk lookaside could keep about ${bytes(r.bytesSharedEstimate)} of its ${bytes(r.b.segmentsBytes)} off the link`,
          );
        return r;
      }),
    );

  overlay
    .command('apply')
    .description(
      'Offline synthesis: base + overlay -> full disk and memory images of the custom VM, as a base directory (resumable with `vmsynth base resume DIR`).',
    )
    .argument('<dir>', 'overlay directory')
    .requiredOption('--out <dir>', 'output directory')
    .option('--base <name>', 'base to apply to (default: the local base with the hashes the overlay names)')
    .option('--trust <file>', 'also trust this public key file (repeatable)', collect, [])
    .option(
      '--threads <n>',
      'worker threads that verify, decompress and write segments (0: all on one thread)',
      nonNegativeInt('--threads'),
      2,
    )
    .option('--no-verify-base', 'skip re-hashing the base files first')
    .option('--force', 'replace an existing output directory')
    .option('--json', 'print the result as JSON')
    .action(async (dir: string, o: OverOverlay & { out: string; verifyBase: boolean; force?: boolean }) =>
      runCommand(!!o.json, async ({ signal, json }) => {
        const { applyOverlay } = await import('../offline/apply.js');
        const r = await applyOverlay({
          overlay: dir,
          out: o.out,
          base: o.base,
          trust: o.trust,
          threads: o.threads,
          verifyBase: o.verifyBase,
          force: o.force,
          signal,
        });
        if (!json) {
          console.log(
            `synthesized ${r.out} from base "${r.base}" + overlay (key ${r.keyId})\n${table([
              [
                'applied',
                `${r.apply.segments} segments, ${r.apply.chunks} chunks, ${bytes(r.apply.imageBytes)} in ${ms(r.apply.ms)} (${r.apply.mbps.toFixed(0)} MB/s)`,
              ],
              ['memory', `${bytes(r.memory.bytes)}  sha256 ${r.memory.sha256}`],
              ['disk', `${bytes(r.disk.bytes)}  sha256 ${r.disk.sha256}`],
              ['total', ms(r.ms.total)],
            ])}`,
          );
        }
        return r;
      }),
    );
}

/** What `overlay inspect` reports of the overlay in `dir` (opened without trust: it only reads). */
async function inspect(dir: string): Promise<OverlayReport> {
  const [{ Overlay }, { inspectOverlay }] = await Promise.all([
    import('../overlay/reader.js'),
    import('../overlay/inspect.js'),
  ]);
  return inspectOverlay(await Overlay.open(dir, { trusted: null }));
}

function reportRows(rep: OverlayReport): [string, string][] {
  return [
    ['chunks by kind', KIND_NAMES.map((k) => `${k} ${rep.kinds[k].chunks}`).join(', ')],
    [
      'modified chunks',
      `memory ${rep.modifiedChunks.memory}, disk ${rep.modifiedChunks.disk} (trimmed ${rep.trimmedChunks})`,
    ],
    [
      'overlay bytes',
      `${bytes(rep.overlayBytes)} (manifest ${bytes(rep.manifestBytes)}, segments ${bytes(rep.segmentsBytes)})`,
    ],
    ['naive bytes', bytes(rep.naiveBytes)],
    ['ratio', `${(rep.ratio * 100).toFixed(1)}% of naive`],
    ['segments', `${rep.segments} (${bytes(rep.segmentBytes)} each before compression)`],
    [
      'order',
      rep.order.kind === 'profile' ? `profile of ${rep.order.runs} run(s)` : 'default (memory by offset, then disk)',
    ],
  ];
}
