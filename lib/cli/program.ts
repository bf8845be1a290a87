/**
 * The `vmsynth` command tree (main.ts runs it). Each command is a thin wrapper over lib/:
 * parse options, call the library, print (human text, or one JSON object
 * as the last stdout line with --json). Command implementations are
 * imported when their command runs, so `--help` and usage errors load
 * only commander and core/.
 */
import { Command } from 'commander';
import { VMSYNTH_VERSION } from '../core/version.js';
import { baseDir, cacheDir, keyDir, runDir, storeDir } from '../core/paths.js';
import { VmsynthError } from '../core/errors.js';
import type { BaseSource } from '../vm/base.js';
import type { ResumeResult } from '../vm/base-resume.js';
import type { DemoResult } from './demo.js';
import { DEFAULTS } from '../core/defaults.js';
import { registerErrorsCommand } from './errors-command.js';
import { registerOverlayCommands } from './overlay-commands.js';
import { registerServeCommands } from './serve-commands.js';
import { registerDiscoverCommands } from './discover-commands.js';
import { registerHandoffCommands } from './handoff-commands.js';
import { registerStoreCommands } from './store-commands.js';
import { registerTransferCommands } from './transfer-commands.js';
import { registerSynthCommands } from './synth-commands.js';
import { exportPaths, resolveConfig } from '../core/config.js';
import { bytes, ms, table } from './format.js';
import { nonNegativeInt, positiveInt, runCommand } from './run.js';

function resumeLines(r: ResumeResult): string {
  return table([
    ['accelerator', r.accel.toUpperCase()],
    ['base verify', r.verifyMs === null ? 'skipped' : ms(r.verifyMs)],
    ['time to running', ms(r.resumeMs)],
    ['time to first reply', ms(r.firstResponseMs)],
    [
      'FUSE bytes before first reply',
      `${bytes(r.fuseBytesReadBeforeFirstResponse)} (memory ${bytes(r.fuseBeforeFirstResponse.memory.bytesRead)} of ${bytes(r.memoryBytes)}, disk ${bytes(r.fuseBeforeFirstResponse.disk.bytesRead)} of ${bytes(r.diskBytes)})`,
    ],
    ['device state', bytes(r.deviceStateBytes)],
    ['first reply', JSON.stringify(r.reply)],
  ]);
}

/** Every command, its options and --help; nothing runs until it is parsed. */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name('vmsynth')
    .description('Just-in-time VM synthesis for mobile offload: resume a custom VM early, over FUSE, from a base VM.')
    .version(VMSYNTH_VERSION)
    .exitOverride()
    .showHelpAfterError()
    .addHelpText(
      'after',
      `
Config: /etc/vmsynth/vmsynth.json (or VMSYNTH_CONFIG) sets the same keys as the
environment below, which overrides it; flags override both. Every command reads
the directories from it; \`vmsynth config check\` prints the effective config and
docs/operations.md lists every key.

Environment:
  VMSYNTH_CONFIG     config file (default /etc/vmsynth/vmsynth.json, if it exists)
  LIBVIRT_URI        libvirt connection (default qemu:///system; or VMSYNTH_LIBVIRT_URI)
  VMSYNTH_BASE_DIR   base VM directories (default ${baseDir()})
  VMSYNTH_RUN_DIR    session directories and FUSE mounts (default ${runDir()})
  VMSYNTH_CACHE_DIR  test guest build cache (default ${cacheDir()})
  VMSYNTH_KEY_DIR    overlay signing keys and trusted public keys (default ${keyDir()})
  VMSYNTH_STORE_DIR  the cloudlet store, for warm starts (default ${storeDir()})
  VMSYNTH_ACCEL      force the accelerator: kvm or tcg (default: detected)
  VMSYNTH_TOKEN      client token for \`serve\` (required of clients) and \`synth\` (presented)
  LOG_LEVEL          debug | info | warn | error | silent (default info)
  LOG_FORMAT         text (default) or json (pino, to stderr); \`serve\` defaults to json on stdout
  NOTIFY_SOCKET, WATCHDOG_USEC  set by systemd for \`serve\` (Type=notify, WatchdogSec)`,
    );

  // Every command finds its directories where the config file puts them (serve
  // and config check resolve the config themselves, with their flags).
  program.hook('preAction', (_root, cmd) => {
    const name = cmd.name();
    if (name === 'serve' || (name === 'check' && cmd.parent?.name() === 'config')) return;
    exportPaths(resolveConfig().config);
  });

  program
    .command('demo')
    .description(
      'The whole story on loopback: build the test guest, capture base "demo", customize it into an overlay, start a synthesis server, synthesize with early start and with the baseline (whole overlay first), print both first-response times.',
    )
    .option(
      '--link-mbit <n>',
      'the link rate the client paces itself to (0: unpaced loopback)',
      nonNegativeInt('--link-mbit'),
      DEFAULTS.demoLinkMbit,
    )
    .option('--json', 'print one JSON object as the last stdout line')
    .action(async (o: { linkMbit: number; json?: boolean }) =>
      runCommand(!!o.json, async ({ signal, json }) => {
        const { runDemo } = await import('./demo.js');
        const r = await runDemo({ signal, linkMbit: o.linkMbit });
        if (!json) {
          const line = (p: DemoResult['earlyStart']) =>
            `${ms(p.firstResponseMs)}  (${bytes(p.bytesBeforeFirstResponse)} of ${bytes(p.overlayBytes)} sent before it)`;
          console.log(
            `vmsynth demo: overlay of base "${r.base}" synthesized on a local server (${r.accelerator.toUpperCase()}), link ${r.link.mbit ? `${r.link.mbit} Mbit/s (${r.link.how})` : r.link.how}`,
          );
          console.log(
            table([
              ['overlay', `${bytes(r.overlay.bytes)} in ${r.overlay.segments} segments`],
              ['first request', `GET ${r.request}`],
              ['first response, early start', line(r.earlyStart)],
              ['first response, baseline', line(r.baseline)],
              ['speedup', `${r.speedup.toFixed(2)}x`],
            ]),
          );
        }
        return r;
      }),
    );

  const guest = program
    .command('guest')
    .description('The built-in guests: the small test guest, and the Debian base guest.');
  guest
    .command('build')
    .description(
      'Build (or find in the cache) a guest. Default: the test guest (Debian kernel, busybox initramfs with the offload app, data disk). With --debian: a debootstrapped Debian bookworm minbase (+ python3, iproute2) on an ext4 disk, with the Debian kernel.',
    )
    .option('--json', 'print the result as JSON')
    .option('--debian', 'build the Debian base guest instead (needs root and a Debian mirror)')
    .option('--disk-mib <n>', 'disk size in MiB (default 64; 4096 with --debian)', positiveInt('--disk-mib'))
    .option(
      '--working-set-mib <n>',
      'test guest only: memory the app fills at start, in MiB',
      positiveInt('--working-set-mib'),
      32,
    )
    .action(async (o: { json?: boolean; debian?: boolean; diskMib?: number; workingSetMib: number }) =>
      runCommand(!!o.json, async ({ json }) => {
        if (o.debian) {
          const { buildDebianGuest } = await import('../guest/debian.js');
          const d = await buildDebianGuest({ diskMiB: o.diskMib });
          if (!json)
            console.log(
              `Debian ${d.suite} guest ${d.key} in ${d.dir}\n${table([
                ['kernel', d.kernel],
                ['initrd', d.initrd],
                ['disk', d.disk],
                ['root', d.root],
                ['cmdline', d.cmdline],
              ])}`,
            );
          return d;
        }
        const { buildGuest } = await import('../guest/build.js');
        const g = await buildGuest({ diskMiB: o.diskMib ?? 64, workingSetMiB: o.workingSetMib });
        if (!json)
          console.log(
            `test guest ${g.key} in ${g.dir}\n${table([
              ['kernel', g.kernel],
              ['initrd', g.initrd],
              ['disk', g.disk],
              ['cmdline', g.cmdline],
            ])}`,
          );
        return g;
      }),
    );

  const base = program.command('base').description('Base VMs: capture, list, verify, resume.');
  base
    .command('create')
    .description(
      'Boot a guest, wait until its app answers, and capture it as a base VM (disk, raw memory, device state, manifest).',
    )
    .argument('[name]', 'base name', 'default')
    .option(
      '--debian',
      'capture the built-in Debian base guest (vmsynth guest build --debian), with 1024 MiB of RAM unless --memory says otherwise',
    )
    .option('--kernel <file>', 'guest kernel (default: the built-in test guest)')
    .option('--initrd <file>', 'guest initrd')
    .option('--disk <file>', 'raw guest disk image')
    .option('--cmdline <text>', 'kernel command line', 'console=ttyS0')
    .option('--memory <mib>', 'guest RAM in MiB (default 256; 1024 with --debian)', positiveInt('--memory'))
    .option('--app-port <port>', 'TCP port of the app in the guest', positiveInt('--app-port'), 8000)
    .option('--timeout <seconds>', 'how long the guest may take to boot and answer', positiveInt('--timeout'), 180)
    .option('--force', 'replace an existing base of that name')
    .option('--json', 'print the manifest as JSON')
    .action(
      async (
        name: string,
        o: {
          debian?: boolean;
          kernel?: string;
          initrd?: string;
          disk?: string;
          cmdline: string;
          memory?: number;
          appPort: number;
          timeout: number;
          force?: boolean;
          json?: boolean;
        },
      ) =>
        runCommand(!!o.json, async ({ signal, json }) => {
          const given = [o.kernel, o.initrd, o.disk].filter(Boolean).length;
          let source: BaseSource;
          const givenFlags = (['kernel', 'initrd', 'disk'] as const).filter((f) => o[f]).map((f) => `--${f}`);
          if (o.debian && given > 0) {
            throw new VmsynthError(
              'VMS_USAGE',
              '--debian captures the built-in Debian guest: leave out --kernel, --initrd and --disk',
              {
                details: { flag: '--debian', conflicts: givenFlags },
              },
            );
          }
          if (o.debian) {
            const { buildDebianGuest, debianBaseSource } = await import('../guest/debian.js');
            source = debianBaseSource(await buildDebianGuest({ memoryMiB: o.memory }));
          } else if (given === 0) {
            const memoryMiB = o.memory ?? 256;
            const { buildGuest } = await import('../guest/build.js');
            const g = await buildGuest({ memoryMiB });
            source = {
              kernel: g.kernel,
              initrd: g.initrd,
              disk: g.disk,
              cmdline: g.cmdline,
              memoryMiB,
              appPort: g.appPort,
              info: { kind: 'vmsynth-test-guest', guestKey: g.key, kernelPackage: g.kernelPackage },
            };
          } else if (given === 3) {
            source = {
              kernel: o.kernel!,
              initrd: o.initrd!,
              disk: o.disk!,
              cmdline: o.cmdline,
              memoryMiB: o.memory ?? 256,
              appPort: o.appPort,
              info: { kind: 'user' },
            };
          } else {
            throw new VmsynthError(
              'VMS_USAGE',
              '--kernel, --initrd and --disk go together: give all three, or none for the built-in test guest',
              {
                details: { together: ['--kernel', '--initrd', '--disk'], given: givenFlags },
              },
            );
          }
          const { createBase } = await import('../vm/base.js');
          const b = await createBase({ name, source, force: o.force, timeoutMs: o.timeout * 1000, signal });
          if (!json) {
            const m = b.manifest;
            console.log(
              `base "${b.name}" captured in ${b.dir}\n${table([
                ['accelerator', m.vm.accel.toUpperCase()],
                ['machine', m.vm.machine],
                ['memory', `${bytes(m.memory.bytes)}  sha256 ${m.memory.sha256}`],
                ['disk', `${bytes(m.disk.bytes)}  sha256 ${m.disk.sha256}`],
                ['device state', bytes(m.deviceState.bytes)],
                ['boot to app', ms(m.created.bootMs)],
              ])}`,
            );
          }
          return b.manifest;
        }),
    );

  base
    .command('list')
    .description('List the base VMs in the base directory.')
    .option('--json', 'print the list as JSON')
    .action(async (o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        const { listBases } = await import('../vm/base.js');
        const all = await listBases();
        if (!json) {
          if (all.length === 0) console.log(`no bases in ${baseDir()} (create one with \`vmsynth base create\`)`);
          for (const b of all) {
            console.log(
              b.ok && b.manifest
                ? `${b.name}  ${b.manifest.vm.accel.toUpperCase()}  memory ${bytes(b.manifest.memory.bytes)}  disk ${bytes(b.manifest.disk.bytes)}  created ${b.manifest.created.at}`
                : `${b.name}  BROKEN ${b.error?.code}: ${b.error?.message}`,
            );
          }
        }
        return all.map((b) => ({
          name: b.name,
          dir: b.dir,
          ok: b.ok,
          ...(b.manifest ? { manifest: b.manifest } : {}),
          ...(b.error ? { error: b.error } : {}),
        }));
      }),
    );

  base
    .command('verify')
    .description('Re-hash every file of a base against its manifest.')
    .argument('<name>', 'base name or directory')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, o: { json?: boolean }) =>
      runCommand(!!o.json, async ({ signal, json }) => {
        const { loadBase, verifyBase } = await import('../vm/base.js');
        const r = await verifyBase(await loadBase(name), signal);
        if (!json)
          console.log(`base "${r.name}" is intact (${Object.keys(r.files).length} files hashed in ${ms(r.ms)})`);
        return r;
      }),
    );

  base
    .command('resume')
    .description(
      'Resume a base VM with its memory and disk served over FUSE, wait for the app, print timings, tear down.',
    )
    .argument('<name>', 'base name or directory')
    .option('--no-verify', 'skip re-hashing the base files first')
    .option('--mem-mb <n>', 'MiB of its working set the app touches for the first reply', nonNegativeInt('--mem-mb'), 0)
    .option('--disk-mb <n>', 'MiB of disk the app reads for the first reply', nonNegativeInt('--disk-mb'), 0)
    .option('--timeout <seconds>', 'how long the app may take to answer', positiveInt('--timeout'), 60)
    .option('--json', 'print the result as JSON')
    .action(
      async (name: string, o: { verify: boolean; memMb: number; diskMb: number; timeout: number; json?: boolean }) =>
        runCommand(!!o.json, async ({ signal, json }) => {
          const { resumeBase } = await import('../vm/base-resume.js');
          const r = await resumeBase({
            base: name,
            verify: o.verify,
            work: { memMb: o.memMb, diskMb: o.diskMb },
            timeoutMs: o.timeout * 1000,
            signal,
          });
          if (!json) console.log(`resumed base "${r.base}" as ${r.domain}\n${resumeLines(r)}`);
          return r;
        }),
    );

  registerOverlayCommands(program);
  registerSynthCommands(program);
  registerServeCommands(program);
  registerStoreCommands(program);
  registerHandoffCommands(program);
  registerDiscoverCommands(program);
  registerTransferCommands(program);
  registerErrorsCommand(program);

  program
    .command('clean')
    .description(
      'Remove what a crashed vmsynth left behind: vmsynth-* domains, FUSE mounts and session directories of dead processes, and QEMU logs of vmsynth domains libvirt no longer knows.',
    )
    .option('--all', 'also remove stale state of other vmsynth instances (other VMSYNTH_RUN_DIR)')
    .option('--json', 'print what was removed as JSON')
    .action(async (o: { all?: boolean; json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        const { Libvirt } = await import('../vm/libvirt.js');
        const { cleanStale } = await import('../vm/janitor.js');
        const lv = await Libvirt.connect();
        try {
          const r = await cleanStale(lv, { allInstances: o.all });
          if (!json)
            console.log(
              `removed ${r.domains.length} domains, ${r.mounts.length} mounts, ${r.sessions.length} session directories, ${r.logs.length} QEMU logs`,
            );
          return r;
        } finally {
          await lv.close();
        }
      }),
    );

  return program;
}
