/**
 * `vmsynth discover`: the cloudlets in reach (announced with DNS-SD on the
 * local network, plus the config's static list), what each offers (bases,
 * load, accelerator) and how far it is; with --overlay, the one a client
 * would pick for that overlay.
 */
import type { Command } from 'commander';
import { resolveConfig } from '../core/config.js';
import { VmsynthError } from '../core/errors.js';
import { runCommand } from './run.js';

export function registerDiscoverCommands(program: Command): void {
  program
    .command('discover')
    .description(
      'List the cloudlets in reach: those announced on the local network (DNS-SD, _vmsynth._tcp) and the config\'s static "cloudlets", each with its bases, load and connect time. --overlay DIR names the one a client would pick for that overlay.',
    )
    .option(
      '--interface <ip>',
      "the address of the interface to browse on (default: announceInterface, else the system's)",
    )
    .option('--timeout <ms>', 'how long to listen for announcements (default 1500; 0: the static list only)')
    .option('--static <list>', 'more cloudlets to ask, HOST:PORT separated by ","')
    .option(
      '--overlay <dir>',
      'pick the cloudlet for this overlay: it holds the base and has room; least loaded, then nearest',
    )
    .option('--token <token>', 'the token the cloudlets want of clients')
    .option('--json', 'print the list as JSON')
    .action(
      async (o: {
        interface?: string;
        timeout?: string;
        static?: string;
        overlay?: string;
        token?: string;
        json?: boolean;
      }) =>
        runCommand(!!o.json, async ({ json }) => {
          const cfg = resolveConfig().config;
          const { discover, pickCloudlet } = await import('../client/discover.js');
          const { parseServer } = await import('../client/connect.js');
          const browseMs = o.timeout !== undefined ? Number(o.timeout) : 1500;
          if (!Number.isFinite(browseMs) || browseMs < 0)
            throw new VmsynthError('VMS_USAGE', `--timeout must be milliseconds, got "${o.timeout}"`, {
              details: { flag: '--timeout' },
            });
          const extra = (o.static ?? '')
            .split(',')
            .filter(Boolean)
            .map((s) => parseServer(s));
          const cloudlets = await discover({
            browseMs,
            iface: o.interface ?? cfg.announceInterface,
            static: [...cfg.cloudlets, ...extra],
            ...(o.token !== undefined ? { token: o.token } : {}),
          });
          let picked = null;
          if (o.overlay) {
            const { Overlay } = await import('../overlay/reader.js');
            const ov = await Overlay.open(o.overlay, { trusted: null });
            picked = pickCloudlet(cloudlets, ov.body.base);
          }
          if (!json) {
            if (cloudlets.length === 0) console.log('no cloudlet in reach (none announced, and no static list)');
            for (const c of cloudlets) {
              const where = `${c.host}:${c.port}`;
              const what = c.info
                ? `${c.info.accel}, ${c.info.sessions}/${c.info.maxSessions} sessions, bases ${c.info.bases.map((b) => b.name).join(', ') || 'none'}`
                : `not asked: ${c.error?.code}: ${c.error?.message}`;
              console.log(`${where}  ${c.name} (${c.source})  ${c.rttMs !== null ? `${c.rttMs} ms` : '—'}  ${what}`);
            }
            if (o.overlay)
              console.log(
                picked
                  ? `picked for the overlay: ${picked.host}:${picked.port}`
                  : "no cloudlet in reach holds the overlay's base with room",
              );
          }
          return { cloudlets, ...(o.overlay ? { picked: picked ? `${picked.host}:${picked.port}` : null } : {}) };
        }),
    );
}
