/**
 * One vmsynth client in a process of its own, for tests that need many
 * clients at once (each a device of its own, with its own event loop and
 * thread pool, as real mobile clients are). Spawned with the test process's
 * execArgv, so it runs the TypeScript sources like the test does.
 *
 * argv[2]: SynthesizeOptions as JSON (without callbacks). Talks JSON lines:
 *   stdout {"ready":true}            loaded; waits for a line on stdin to start
 *   stdout {"up":{...}}              first response in: the VM stays up until the next stdin line
 *   stdout {"result":{...}}          synthesize() resolved
 *   stdout {"error":{code,message}}  synthesize() rejected
 */
import { createInterface } from 'node:readline';
import { synthesize, type SynthesizeOptions } from '../../lib/client/client.js';
import { VmsynthError } from '../../lib/core/errors.js';

const opts = JSON.parse(process.argv[2]!) as SynthesizeOptions;
const lines = createInterface({ input: process.stdin });
const pending: Array<() => void> = [];
lines.on('line', () => pending.shift()?.());
const nextLine = () => new Promise<void>((resolve) => pending.push(resolve));
const say = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);

say({ ready: true });
await nextLine();
try {
  const result = await synthesize({
    ...opts,
    whileRunning: async ({ session }) => {
      say({ up: { session } });
      await nextLine();
    },
  });
  say({ result });
} catch (err) {
  say({
    error:
      err instanceof VmsynthError
        ? { code: err.code, message: err.message }
        : { code: 'NOT_VMSYNTH', message: String(err) },
  });
}
lines.close();
