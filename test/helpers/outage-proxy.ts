/**
 * A TCP proxy whose path can go down and come back: down() resets every
 * connection through it and, until up(), resets each new one as it comes
 * (a client out of reach: its connects get through to nothing). Bytes pass
 * untouched; any number of connections.
 */
import net from 'node:net';

export class OutageProxy {
  private readonly server: net.Server;
  private readonly open = new Set<net.Socket>();
  private isDown = false;
  /** Connections accepted while up, and reset while down. */
  connections = 0;
  refused = 0;

  private constructor(private readonly target: { host: string; port: number }) {
    this.server = net.createServer((c) => this.accept(c));
  }

  static async listen(target: { host: string; port: number }): Promise<OutageProxy> {
    const p = new OutageProxy(target);
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(0, '127.0.0.1', () => resolve());
    });
    return p;
  }

  address(): { host: string; port: number } {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** The path goes: every connection is reset, and new ones are until up(). */
  down(): void {
    this.isDown = true;
    for (const s of this.open) s.resetAndDestroy();
    this.open.clear();
  }

  up(): void {
    this.isDown = false;
  }

  close(): void {
    this.down();
    this.server.close();
  }

  private accept(client: net.Socket): void {
    client.on('error', () => undefined);
    if (this.isDown) {
      this.refused++;
      client.resetAndDestroy();
      return;
    }
    this.connections++;
    const upstream = net.connect(this.target);
    upstream.on('error', () => undefined);
    for (const s of [client, upstream]) {
      this.open.add(s);
      s.on('close', () => {
        this.open.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }
}
