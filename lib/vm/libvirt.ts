/**
 * The libvirt adapter: a connection with typed errors, transient domains
 * named `vmsynth-<id>`, and the few lookups vmsynth needs. Thin on purpose:
 * libvirt calls run off the event loop inside @unraid/libvirt.
 */
import { promises as fsp } from 'node:fs';
import { DomainState, Hypervisor, type Domain } from '@unraid/libvirt';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { libvirtUri } from '../core/paths.js';
import { DOMAIN_PREFIX } from './run-dir.js';

/** Every vmsynth domain's name starts so (defined beside the run directories, which name them). */
export { DOMAIN_PREFIX };

export class Libvirt {
  private constructor(
    readonly hv: Hypervisor,
    readonly uri: string,
  ) {}

  static async connect(uri: string = libvirtUri()): Promise<Libvirt> {
    const hv = new Hypervisor({ uri });
    try {
      await hv.connectOpen();
    } catch (cause) {
      throw new VmsynthError(
        'VMS_LIBVIRT_UNREACHABLE',
        `cannot connect to libvirt at ${uri}: ${(cause as Error).message}`,
        { cause, details: { uri } },
      );
    }
    return new Libvirt(hv, uri);
  }

  async close(): Promise<void> {
    await this.hv.connectClose().catch(() => undefined);
  }

  /** Creates and starts a transient domain from XML. */
  async create(xml: string, name: string): Promise<Domain> {
    try {
      const dom = await this.hv.domainCreateXML(xml);
      publish('domainCreated', { name, pid: await qemuPid(name) });
      return dom;
    } catch (cause) {
      throw new VmsynthError('VMS_LIBVIRT', `libvirt could not start domain ${name}: ${(cause as Error).message}`, {
        cause,
        details: { name },
      });
    }
  }

  /** Destroys a domain by name; a domain that is already gone is fine. Returns whether one was destroyed. */
  async destroy(name: string): Promise<boolean> {
    let dom: Domain;
    try {
      dom = await this.hv.domainLookupByName(name);
    } catch {
      return false;
    }
    try {
      await dom.destroy();
    } catch (cause) {
      if (await this.isActive(name)) {
        throw new VmsynthError('VMS_LIBVIRT', `cannot destroy domain ${name}: ${(cause as Error).message}`, { cause });
      }
    }
    publish('domainDestroyed', { name });
    return true;
  }

  /**
   * libvirtd answers a cheap round trip within `timeoutMs` (for readiness
   * checks). The host name, not a domain list: it takes no domain lock, so a
   * domain being destroyed does not make a healthy daemon look dead.
   */
  async alive(timeoutMs = 5000): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    try {
      return await Promise.race([
        this.hv.connectGetHostname().then(
          () => true,
          () => false,
        ),
        timeout,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** True while a domain of that name exists and is not shut off. */
  async isActive(name: string): Promise<boolean> {
    try {
      const dom = await this.hv.domainLookupByName(name);
      const info = await dom.getInfo();
      return info.state !== DomainState.SHUTOFF;
    } catch {
      return false;
    }
  }

  async xmlDesc(name: string): Promise<string> {
    const dom = await this.hv.domainLookupByName(name);
    return dom.getXMLDesc();
  }

  /** Names of all vmsynth domains libvirt knows (running or defined). */
  async vmsynthDomains(): Promise<string[]> {
    const doms = await this.hv.connectListAllDomains();
    const names = await Promise.all(doms.map((d) => d.getName()));
    return names.filter((n) => n.startsWith(DOMAIN_PREFIX));
  }
}

/** The QEMU pid of a running system-mode domain, from libvirt's pid file. */
export async function qemuPid(name: string): Promise<number | null> {
  try {
    const pid = Number((await fsp.readFile(`/run/libvirt/qemu/${name}.pid`, 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}
