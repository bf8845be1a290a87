/**
 * Who may come in, and how often: client authentication by token and the
 * per-address connection rate.
 *
 * Tokens: each client has a name and a random token; the server keeps only
 * the token's SHA-256, compares digests in constant time, and names the
 * client in logs, metrics and per-client limits. Chosen over mutual TLS
 * because the clients are mobile apps: a bearer token is one string an app
 * can be provisioned with and a cloudlet can revoke by deleting a line,
 * where client certificates need a CA and on-device key storage. Transport
 * confidentiality, where the network is not trusted, comes from TLS on the
 * server side (tlsCert/tlsKey); overlay integrity never depends on either,
 * because every manifest is signed and every segment hashed.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { tokenSha256, type ClientCredential } from '../core/config.js';
import { VmsynthError } from '../core/errors.js';

/** A new random client token (256 bits, base64url). */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

export class Authenticator {
  private readonly digests: { name: string; digest: Buffer }[];

  constructor(clients: ClientCredential[]) {
    this.digests = clients.map((c) => ({ name: c.name, digest: Buffer.from(c.tokenSha256, 'hex') }));
  }

  get required(): boolean {
    return this.digests.length > 0;
  }

  /** The client's name, or VMS_AUTH. Every entry is compared, so timing does not tell which matched. */
  authenticate(token: string | undefined): string {
    if (!this.required) return 'anonymous';
    if (token === undefined)
      throw new VmsynthError('VMS_AUTH', 'this server requires a client token', { details: { reason: 'missing' } });
    const got = Buffer.from(tokenSha256(token), 'hex');
    let name: string | null = null;
    for (const c of this.digests) if (timingSafeEqual(got, c.digest) && name === null) name = c.name;
    if (name === null)
      throw new VmsynthError('VMS_AUTH', 'the client token is not valid', { details: { reason: 'invalid' } });
    return name;
  }
}

/**
 * Sliding one-minute window of connection starts per remote address. The
 * table is bounded: addresses idle for a minute are dropped on the next sweep.
 */
export class RateLimiter {
  private readonly starts = new Map<string, number[]>();
  private lastSweep = 0;

  constructor(
    private readonly perMinute: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records a connection from `address`; false when it is over the limit (the refused one is not counted). */
  admit(address: string): boolean {
    const t = this.now();
    if (t - this.lastSweep > 60_000) this.sweep(t);
    const list = (this.starts.get(address) ?? []).filter((s) => t - s < 60_000);
    if (list.length >= this.perMinute) {
      this.starts.set(address, list);
      return false;
    }
    list.push(t);
    this.starts.set(address, list);
    return true;
  }

  private sweep(t: number): void {
    this.lastSweep = t;
    for (const [a, list] of this.starts) if (list.every((s) => t - s >= 60_000)) this.starts.delete(a);
  }

  /** Addresses tracked now (tests: the table stays bounded). */
  get size(): number {
    return this.starts.size;
  }
}
