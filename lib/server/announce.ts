/**
 * Announcing this cloudlet with DNS-SD over mDNS (`_vmsynth._tcp`, through
 * bonjour-service): its name and the port of its listener, and in TXT the
 * protocol it speaks. What it offers (bases, load) is asked of it directly
 * (an `info` request: `vmsynth discover`), so it is never stale. Off unless
 * configured (config key `announce`); `announceInterface` keeps the
 * multicast on one interface.
 */
import os from 'node:os';
import { Bonjour, type Service } from 'bonjour-service';
import { VmsynthError } from '../core/errors.js';
import { mdnsOptions, SERVICE_TYPE } from '../protocol/dns-sd.js';
import { PROTOCOL } from '../protocol/messages.js';

export class Announcer {
  private constructor(
    private readonly bonjour: Bonjour,
    private readonly service: Service,
  ) {}

  static start(o: { port: number; name?: string; iface: string | null }): Promise<Announcer> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const bonjour = new Bonjour(mdnsOptions(o.iface), (err: Error) => {
        if (settled) return;
        settled = true;
        reject(
          new VmsynthError(
            'VMS_CONFIG',
            `cannot announce on mDNS${o.iface ? ` (interface ${o.iface})` : ''}: ${err.message}`,
            {
              cause: err,
            },
          ),
        );
      });
      // Unique on the link even for cloudlets that share a host name (network namespaces of one machine).
      const id = `${(o.iface ?? os.hostname()).replace(/[^A-Za-z0-9-]/g, '-')}-${o.port}`;
      const service = bonjour.publish({
        name: o.name ?? `vmsynth ${id}`,
        host: `vmsynth-${id}.local`,
        type: SERVICE_TYPE,
        port: o.port,
        txt: { protocol: PROTOCOL },
        disableIPv6: true,
      });
      service.on('up', () => {
        if (settled) return;
        settled = true;
        resolve(new Announcer(bonjour, service));
      });
      service.on('error', (err: Error) => {
        if (settled) return;
        settled = true;
        bonjour.destroy();
        reject(new VmsynthError('VMS_CONFIG', `cannot announce on mDNS: ${err.message}`, { cause: err }));
      });
    });
  }

  private closing: Promise<void> | null = null;

  /** Says goodbye (TTL 0), so browsers drop this cloudlet at once, and closes the sockets. Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise((resolve) => {
      const stop = this.service.stop as (done: () => void) => void;
      stop(() => this.bonjour.destroy(() => resolve()));
    });
    return this.closing;
  }
}
