/**
 * `node dist/bench/lib/serve-repo.js DIR HOST`: serves an app's local apt
 * repository (lib/guest/apt-repo.ts) on HOST, any port, until SIGTERM. The
 * suite runs it inside the client's network namespace, so a remote install
 * downloads its packages over the same shaped link as an overlay. Prints
 * {"port":N} once listening.
 */
import { serveDirectory } from '../../lib/guest/apt-repo.js';

const [dir, host] = process.argv.slice(2);
if (!dir || !host) {
  process.stderr.write('usage: serve-repo DIR HOST\n');
  process.exit(64);
}
const server = await serveDirectory(dir, host);
process.stdout.write(JSON.stringify({ port: server.port }) + '\n');
const stop = () => void server.close().then(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
