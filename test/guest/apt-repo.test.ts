/**
 * The apps' repository server: serves the files directly in its directory,
 * nothing else (no listing, no subdirectories, no dot files, no way out),
 * and survives malformed paths.
 */
import t from 'tap';
import http from 'node:http';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { serveDirectory } from '../../lib/guest/apt-repo.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-repo-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
writeFileSync(path.join(dir, 'Packages'), 'Package: x\n');
writeFileSync(path.join(dir, 'x_1_all.deb'), Buffer.alloc(3000, 7));
writeFileSync(path.join(dir, '.hidden'), 'secret');
mkdirSync(path.join(dir, 'sub'));
writeFileSync(path.join(dir, 'sub', 'f'), 'nested');
writeFileSync(path.join(os.tmpdir(), 'vmsynth-repo-test-outside'), 'outside');
t.teardown(() => rmSync(path.join(os.tmpdir(), 'vmsynth-repo-test-outside'), { force: true }));

function get(port: number, rawPath: string, method = 'GET'): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: rawPath, method, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('serves the repository files, and only them', async (t) => {
  const s = await serveDirectory(dir, '127.0.0.1');
  t.teardown(() => s.close());
  t.same(await get(s.port, '/Packages'), { status: 200, body: Buffer.from('Package: x\n') });
  t.same((await get(s.port, '/./x_1_all.deb')).body.length, 3000, 'apt asks for ./NAME in a flat repository');
  t.equal((await get(s.port, '/x_1_all.deb', 'HEAD')).status, 200);
  t.equal(s.bytesSent(), 11 + 3000, 'counts the body bytes it sent');
  for (const bad of ['/', '/.hidden', '/sub', '/sub/f', '/sub%2Ff', '/..%2Fvmsynth-repo-test-outside', '/../vmsynth-repo-test-outside', '/%', '/%E0%A4%A', '/missing', '/Packages%00']) {
    t.equal((await get(s.port, bad)).status, 404, `${bad}: 404`);
  }
  t.equal((await get(s.port, '/Packages', 'DELETE')).status, 404, 'only GET and HEAD');
  t.equal((await get(s.port, '/Packages')).status, 200, 'still serving after malformed requests');
});
