/**
 * Ports for QEMU's host forwards. A port is checked free here and bound by
 * QEMU a moment later; in between, nothing else may take it. So the ports
 * come from outside the kernel's range for outgoing connections' local ports
 * (an outgoing connection, which any session makes, takes any free port of
 * that range without asking), and a port handed out is not handed out again
 * for a minute (two sessions starting at once could otherwise be given the
 * same one). Seen before this: eight syntheses at once, one QEMU refused
 * "Could not set up host forwarding rule".
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';

/** Ports handed out, and when. */
const handed = new Map<number, number>();
const REUSE_AFTER_MS = 60_000;

/** The kernel's local port range for outgoing connections (Linux's default when it cannot be read). */
function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(lo) && Number.isInteger(hi) && lo! <= hi!) return [lo!, hi!];
  } catch {
    // not Linux, or no /proc: the default
  }
  return [32768, 60999];
}

/** Where to look: the widest stretch outside the ephemeral range, above the well-known ports. */
function searchRange(): [number, number] {
  const [lo, hi] = ephemeralRange();
  const below: [number, number] = [Math.max(10_000, 1024), lo - 1];
  const above: [number, number] = [hi + 1, 65535];
  return below[1] - below[0] >= above[1] - above[0] ? below : above;
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** Any port the kernel picks (the fallback: free a moment ago, no more). */
function anyPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** A TCP port on 127.0.0.1, free now and not one an outgoing connection will take. */
/** Whether a listen address is loopback only (reachable from this host alone). */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

export function freePort(): Promise<number> {
  const [from, to] = searchRange();
  return freePortIn(from, to);
}

/** A free port of [from, to] not handed out in the last minute, tried at random (any free port when none is found). */
export async function freePortIn(from: number, to: number, tries = 64): Promise<number> {
  const now = Date.now();
  for (const [port, at] of handed) if (now - at > REUSE_AFTER_MS) handed.delete(port);
  for (let i = 0; i < tries && to >= from; i++) {
    const port = from + Math.floor(Math.random() * (to - from + 1));
    if (handed.has(port) || !(await canBind(port))) continue;
    handed.set(port, now);
    return port;
  }
  const port = await anyPort();
  handed.set(port, now);
  return port;
}
