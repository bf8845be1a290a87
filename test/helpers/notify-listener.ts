/**
 * A notification socket as systemd opens it (AF_UNIX, SOCK_DGRAM, bound to a
 * path or an abstract "@name"), for tests of the sd_notify protocol. Python
 * (installed by bootstrap) has the datagram sockets Node lacks.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import readline from 'node:readline';

// A notification socket as systemd opens it: AF_UNIX, SOCK_DGRAM, bound to a path or an
// abstract name. Python (installed by bootstrap) has the datagram sockets Node lacks.
// Prints "ready" once bound, then each datagram as a JSON string, one per line.
const LISTENER = `
import json, socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + addr[1:] if addr.startswith("@") else addr)
print("ready", flush=True)
while True:
    print(json.dumps(s.recv(65536).decode("utf-8")), flush=True)
`;

export interface Listener {
  /** The next datagram received (rejects after timeoutMs, default 5 s). */
  next(timeoutMs?: number): Promise<string>;
  close(): void;
}

export async function listen(address: string): Promise<Listener> {
  const child: ChildProcessWithoutNullStreams = spawn('python3', ['-u', '-c', LISTENER, address]);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines: string[] = [];
  const waiting: Array<(line: string) => void> = [];
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else lines.push(line);
  });
  const nextLine = (timeoutMs = 5000) =>
    new Promise<string>((resolve, reject) => {
      const line = lines.shift();
      if (line !== undefined) return resolve(line);
      const timer = setTimeout(
        () => reject(new Error(`no datagram within ${timeoutMs} ms (listener stderr: ${stderr})`)),
        timeoutMs,
      );
      waiting.push((l) => {
        clearTimeout(timer);
        resolve(l);
      });
    });
  const first = await nextLine();
  if (first !== 'ready') throw new Error(`listener did not start: ${first} ${stderr}`);
  return {
    next: async (timeoutMs?: number) => JSON.parse(await nextLine(timeoutMs)) as string,
    close: () => child.kill('SIGKILL'),
  };
}
