/**
 * The ops endpoint of `vmsynth serve` (node:http, GET only):
 *   /healthz  200 while the process answers at all (liveness);
 *   /readyz   200 while it accepts sessions and libvirt answers, else 503
 *             with the reason (readiness: take the cloudlet out of rotation);
 *   /metrics  Prometheus text from ServerMetrics;
 * plus what `routes` answers (the CLI hangs the live session view there,
 * lib/web/). Anything else is 404. It binds loopback by default: metrics name clients.
 */
import http from 'node:http';
import type net from 'node:net';
import { VmsynthError } from '../core/errors.js';
import type { ServerMetrics } from './metrics.js';

/** More routes on the endpoint: answers the request and returns true, or returns false. */
export type Routes = (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => boolean;

export interface Readiness {
  /** null when ready, else why not. */
  notReady(): Promise<string | null>;
}

export class HealthEndpoint {
  private constructor(private readonly server: http.Server) {}

  static async listen(
    host: string,
    port: number,
    metrics: ServerMetrics,
    readiness: Readiness,
    routes?: Routes,
  ): Promise<HealthEndpoint> {
    const server = http.createServer((req, res) => {
      const send = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
        res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
        res.end(body);
      };
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'GET only\n');
      const url = new URL(req.url ?? '/', 'http://x');
      if (routes?.(req, res, url)) return;
      switch (url.pathname) {
        case '/healthz':
          return send(200, 'ok\n');
        case '/readyz':
          return void readiness.notReady().then(
            (why) => (why === null ? send(200, 'ready\n') : send(503, `not ready: ${why}\n`)),
            (err: unknown) => send(503, `not ready: ${(err as Error).message}\n`),
          );
        case '/metrics':
          return void metrics.text().then(
            (text) => send(200, text, metrics.contentType),
            (err: unknown) => send(500, `${(err as Error).message}\n`),
          );
        default:
          return send(404, `not found: try /healthz, /readyz or /metrics${routes ? ' (or /sessions)' : ''}\n`);
      }
    });
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(
          new VmsynthError(
            'VMS_CONFIG',
            `cannot listen for metrics on ${host}:${port}: ${err.message} (set metricsListen, or "off")`,
            { cause: err },
          ),
        ),
      );
      server.listen(port, host, () => resolve());
    });
    return new HealthEndpoint(server);
  }

  address(): { host: string; port: number } {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}
