/**
 * The live view of every session, on the ops listener (`vmsynth serve`'s
 * metricsListen, beside /metrics):
 *   /sessions            the page (page.ts), drawn with uPlot;
 *   /sessions/events     server-sent events: `snapshot` (every session) at
 *                        once, then `update` (the sessions that changed) at
 *                        most every UPDATE_MS;
 *   /sessions/uplot.js, /sessions/uplot.css   the chart library's files.
 * With a view token configured, the page and the events need it (`Authorization: Bearer T`,
 * or `?token=T`, which the page passes on to its event stream); the
 * listener binds loopback by default.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { channels, type ChannelName } from '../core/diagnostics.js';
import { pageHtml } from './page.js';
import { SessionBoard } from './session-board.js';

const UPDATE_MS = 250;
const KEEPALIVE_MS = 15_000;

const EVENTS: ChannelName[] = [
  'sessionStarted',
  'sessionAdopted',
  'sessionResumed',
  'firstResponse',
  'overlayComplete',
  'demandFetch',
  'segmentApplied',
  'readUnblocked',
  'vmDied',
  'sessionDetached',
  'sessionReattached',
  'sessionLeft',
  'sessionEnded',
];

/** uPlot's browser build and stylesheet, read once. */
function uplotFiles(): { js: string; css: string } {
  const dir = path.dirname(createRequire(import.meta.url).resolve('uplot/dist/uPlot.iife.min.js'));
  return {
    js: readFileSync(path.join(dir, 'uPlot.iife.min.js'), 'utf8'),
    css: readFileSync(path.join(dir, 'uPlot.min.css'), 'utf8'),
  };
}

export class SessionView {
  readonly board = new SessionBoard();
  private readonly streams = new Set<http.ServerResponse>();
  private readonly unsubscribe: (() => void)[] = [];
  private readonly timer: NodeJS.Timeout;
  private readonly keepalive: NodeJS.Timeout;
  private assets: { js: string; css: string } | null = null;

  constructor(
    private readonly opts: {
      tokenSha256: string | null;
      /** Served without a token (a loopback listener); else the view needs viewTokenSha256 set. */
      open: boolean;
    } = { tokenSha256: null, open: true },
  ) {
    for (const name of EVENTS) {
      const on = (m: unknown) => this.board.apply(name, m as Record<string, unknown>);
      channels[name].subscribe(on);
      this.unsubscribe.push(() => channels[name].unsubscribe(on));
    }
    this.timer = setInterval(() => this.flush(), UPDATE_MS);
    this.keepalive = setInterval(() => this.broadcast(': keepalive\n\n'), KEEPALIVE_MS);
    this.timer.unref();
    this.keepalive.unref();
  }

  /** Answers a request under /sessions; false for any other path (the endpoint's own routes). */
  handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): boolean {
    if (url.pathname !== '/sessions' && !url.pathname.startsWith('/sessions/')) return false;
    // The chart library's files are public; the page and the events need the token.
    const asset = url.pathname === '/sessions/uplot.js' || url.pathname === '/sessions/uplot.css';
    if (!asset && !this.authorized(req, url)) {
      res.writeHead(401, { 'content-type': 'text/plain; charset=utf-8', 'www-authenticate': 'Bearer' });
      res.end(
        this.opts.tokenSha256 || this.opts.open
          ? 'the session view needs its token: Authorization: Bearer TOKEN, or ?token=TOKEN\n'
          : 'the session view is off: metricsListen is not loopback and no viewTokenSha256 is set (vmsynth token generate view)\n',
      );
      return true;
    }
    const send = (type: string, body: string) => {
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    switch (url.pathname) {
      case '/sessions':
        send('text/html; charset=utf-8', pageHtml());
        return true;
      case '/sessions/uplot.js':
        send('text/javascript; charset=utf-8', (this.assets ??= uplotFiles()).js);
        return true;
      case '/sessions/uplot.css':
        send('text/css; charset=utf-8', (this.assets ??= uplotFiles()).css);
        return true;
      case '/sessions/events':
        this.stream(res);
        return true;
      default:
        res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
        res.end('not found: try /sessions\n');
        return true;
    }
  }

  private authorized(req: http.IncomingMessage, url: URL): boolean {
    const want = this.opts.tokenSha256;
    if (!want) return this.opts.open;
    const header = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const token = header ?? url.searchParams.get('token');
    if (!token) return false;
    const got = createHash('sha256').update(token).digest();
    const expected = Buffer.from(want, 'hex');
    return expected.length === got.length && timingSafeEqual(got, expected);
  }

  private stream(res: http.ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
    });
    res.write(`event: snapshot\ndata: ${JSON.stringify({ sessions: this.board.all() })}\n\n`);
    this.streams.add(res);
    res.on('close', () => this.streams.delete(res));
  }

  private flush(): void {
    const changed = this.board.takeChanged();
    if (changed.length > 0) this.broadcast(`event: update\ndata: ${JSON.stringify({ sessions: changed })}\n\n`);
  }

  private broadcast(text: string): void {
    for (const res of this.streams) res.write(text);
  }

  close(): void {
    clearInterval(this.timer);
    clearInterval(this.keepalive);
    for (const u of this.unsubscribe) u();
    for (const res of this.streams) res.end();
    this.streams.clear();
  }
}
