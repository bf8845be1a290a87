/**
 * Local apt repositories for the Debian base's apps: exactly the .debs apt
 * would install on the base for a package list (--no-install-recommends),
 * resolved and downloaded in the base's own debootstrapped root, kept as a
 * flat repository (Packages + Release) under <cache>/apt-repos/<key>, and a
 * small static HTTP server to serve it to a guest
 * (`deb [trusted=yes] http://HOST:PORT/ ./`).
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { cacheDir } from '../core/paths.js';
import { sh } from './build.js';
import { debianMirror, type DebianGuest } from './debian.js';

export interface AptRepo {
  dir: string;
  packages: string[];
  /** The .deb files, by name. */
  debs: string[];
  /** Sum of the .deb sizes: what an install downloads. */
  bytes: number;
  /** Sum of their Installed-Size: what an install adds to the disk. */
  installedBytes: number;
}

/** The repository of `packages` for the Debian guest, downloading it on first use. */
export async function buildAptRepo(guest: DebianGuest, packages: string[]): Promise<AptRepo> {
  const wanted = [...new Set(packages)].sort();
  const key = createHash('sha256').update(JSON.stringify({ guest: guest.key, wanted })).digest('hex').slice(0, 16);
  const dir = path.join(cacheDir(), 'apt-repos', key);
  const done = await fsp.readFile(path.join(dir, 'repo.json'), 'utf8').catch(() => null);
  if (done) return JSON.parse(done) as AptRepo;

  const tmp = `${dir}.tmp-${process.pid}`;
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  // apt runs in the base's root, on state of its own under /tmp there: the root's package set is the base's.
  const inRoot = `/tmp/vmsynth-apt-${process.pid}`;
  const state = path.join(guest.root, inRoot.slice(1));
  try {
    for (const d of ['lists/partial', 'archives/partial']) await fsp.mkdir(path.join(state, d), { recursive: true });
    await fsp.writeFile(path.join(state, 'sources.list'), `deb ${debianMirror()} ${guest.suite} main\ndeb ${debianMirror().replace(/\/debian\/?$/, '/debian-security')} ${guest.suite}-security main\n`);
    const opts = [
      `-oDir::Etc::SourceList=${inRoot}/sources.list`, '-oDir::Etc::SourceParts=-', `-oDir::State::Lists=${inRoot}/lists`,
      `-oDir::Cache::Archives=${inRoot}/archives`, '-oDebug::NoLocking=1', '-oAPT::Sandbox::User=root', '-qq',
    ];
    if (wanted.length > 0) {
      publish('progress', { step: `resolving and downloading ${wanted.join(' ')} for the Debian base` });
      await sh('chroot', [guest.root, 'apt-get', ...opts, 'update']);
      await sh('chroot', [guest.root, 'apt-get', ...opts, 'install', '--download-only', '-y', '--no-install-recommends', ...wanted]);
    }
    const debs = (await fsp.readdir(path.join(state, 'archives'))).filter((f) => f.endsWith('.deb')).sort();
    let bytes = 0;
    for (const f of debs) {
      await fsp.rename(path.join(state, 'archives', f), path.join(tmp, f));
      bytes += (await fsp.stat(path.join(tmp, f))).size;
    }
    const index = `${await sh('dpkg-scanpackages', ['--multiversion', '.', '/dev/null'], tmp)}\n`;
    const installedBytes = [...index.matchAll(/^Installed-Size:\s*(\d+)/gm)].reduce((sum, m) => sum + Number(m[1]) * 1024, 0);
    await fsp.writeFile(path.join(tmp, 'Packages'), index);
    await fsp.writeFile(path.join(tmp, 'Release'), `${await sh('apt-ftparchive', ['release', '.'], tmp)}\n`);
    const repo: AptRepo = { dir, packages: wanted, debs, bytes, installedBytes };
    await fsp.writeFile(path.join(tmp, 'repo.json'), JSON.stringify(repo, null, 2) + '\n');
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.rename(tmp, dir);
    return repo;
  } catch (err) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err instanceof VmsynthError ? err : new VmsynthError('VMS_GUEST_BUILD', `building the apt repository of ${wanted.join(' ')} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    await fsp.rm(state, { recursive: true, force: true });
  }
}

export interface DirServer {
  port: number;
  /** Bytes of file bodies sent so far. */
  bytesSent(): number;
  close(): Promise<void>;
}

/** Serves the files directly in `dir` (no listing, no subdirectories) over HTTP on host:port (port 0: any). */
export async function serveDirectory(dir: string, host: string, port = 0): Promise<DirServer> {
  let sent = 0;
  const server = http.createServer((req, res) => {
    let name = '';
    try {
      name = decodeURIComponent((req.url ?? '/').split('?')[0]!.replace(/^\/+/, '').replace(/^\.\//, ''));
    } catch {
      // malformed percent-encoding: no such file
    }
    if ((req.method !== 'GET' && req.method !== 'HEAD') || !name || name.includes('/') || name.includes('\0') || name.startsWith('.')) {
      res.writeHead(404).end();
      return;
    }
    const file = path.join(dir, name);
    fsp.stat(file).then((st) => {
      if (!st.isFile()) throw new Error('not a file');
      res.writeHead(200, { 'Content-Length': st.size, 'Content-Type': 'application/octet-stream' });
      if (req.method === 'HEAD') return void res.end();
      const body = createReadStream(file);
      body.on('data', (c) => { sent += c.length; });
      body.pipe(res);
    }).catch(() => res.writeHead(404).end());
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    bytesSent: () => sent,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
