/**
 * Overlays and bases in an S3-compatible object store (AWS S3, MinIO, Ceph
 * RGW; s3rver in the tests), through @aws-sdk/client-s3. An overlay pushed to
 * `s3://bucket/prefix` is its two files as objects, `prefix/overlay.manifest`
 * and `prefix/overlay.segments`, so a synthesis server can fetch any segment
 * with a ranged GET of the offset and length its manifest names. A base is its
 * directory's files under its prefix.
 *
 * Credentials come the standard AWS way (environment, shared config and
 * credentials files, AWS_PROFILE, instance roles); the endpoint and region
 * from config (s3Endpoint, s3Region), or the SDK's own defaults. Every call
 * has a deadline, so an object store that is slow or unreachable fails fast
 * instead of hanging; failures become VMS_OBJECT_STORE with details.reason
 * "not-found", "denied", "timeout", "unreachable" or "error".
 */
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { GetObjectCommand, HeadObjectCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { VmsynthError } from '../core/errors.js';

// The SDK warns, once per process, that its releases after January 2027 need Node 22. This
// vmsynth runs on Node 20 with the SDK its lockfile pins; the warning would end up in every
// command's output and the server log, so it is off unless the environment asks for it.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export interface S3Location {
  bucket: string;
  /** Without a leading or trailing "/"; "" for the bucket's root. */
  prefix: string;
}

export interface ObjectStoreOptions {
  /** An S3-compatible endpoint (http://host:port); none: AWS S3. Path-style addressing is used with one. */
  endpoint?: string | null;
  region?: string;
  /** Deadline of each call, ms (default 10 s). */
  timeoutMs?: number;
  /** Explicit credentials (tests); none: the SDK's default chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** `s3://bucket[/prefix]`, or VMS_USAGE. */
export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url);
  if (!m)
    throw new VmsynthError('VMS_USAGE', `"${url.slice(0, 200)}" is not an S3 URL: s3://BUCKET[/PREFIX]`, {
      details: { url: url.slice(0, 200) },
    });
  const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
  return { bucket: m[1]!, prefix };
}

export function s3Url(loc: S3Location): string {
  return `s3://${loc.bucket}${loc.prefix ? `/${loc.prefix}` : ''}`;
}

function keyOf(loc: S3Location, name: string): string {
  return loc.prefix ? `${loc.prefix}/${name}` : name;
}

/** Why an object store call failed, as a reason a log or metric can count. */
export type ObjectStoreFailure = 'not-found' | 'denied' | 'timeout' | 'unreachable' | 'error';

function failure(err: unknown, what: string, timedOut: boolean): VmsynthError {
  const e = err as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  const code = e.code ?? '';
  const reason: ObjectStoreFailure = timedOut
    ? 'timeout'
    : status === 404 || e.name === 'NoSuchKey' || e.name === 'NoSuchBucket' || e.name === 'NotFound'
      ? 'not-found'
      : status === 403 || status === 401
        ? 'denied'
        : ['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'EAI_AGAIN'].includes(code)
          ? 'unreachable'
          : 'error';
  return new VmsynthError(
    'VMS_OBJECT_STORE',
    `${what}: ${reason === 'timeout' ? 'no answer in time' : `${reason}${status ? ` (HTTP ${status})` : ''}: ${e.name ?? ''} ${e.message ?? ''}`.trim()}`,
    { cause: err, details: { reason, ...(status ? { status } : {}) } },
  );
}

export class ObjectStore {
  readonly client: S3Client;
  private readonly timeoutMs: number;

  constructor(opts: ObjectStoreOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    const config: S3ClientConfig = {
      region: opts.region ?? process.env.AWS_REGION ?? 'us-east-1',
      maxAttempts: 2,
      requestHandler: { connectionTimeout: Math.min(this.timeoutMs, 5000), requestTimeout: this.timeoutMs },
      ...(opts.endpoint ? { endpoint: opts.endpoint, forcePathStyle: true } : {}),
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
    };
    this.client = new S3Client(config);
  }

  /** Runs `fn` with a signal that fires at the deadline (or with `signal`); maps failures. */
  private async call<T>(
    what: string,
    fn: (signal: AbortSignal) => Promise<T>,
    signal?: AbortSignal,
    ms = this.timeoutMs,
  ): Promise<T> {
    const deadline = AbortSignal.timeout(ms);
    const both = signal ? AbortSignal.any([signal, deadline]) : deadline;
    try {
      return await fn(both);
    } catch (err) {
      if (signal?.aborted) throw err;
      throw failure(err, what, deadline.aborted);
    }
  }

  /** An object's bytes, or `bytes` of them from `offset` (a ranged GET). */
  get(loc: S3Location, name: string, range?: { offset: number; bytes: number }, signal?: AbortSignal): Promise<Buffer> {
    const key = keyOf(loc, name);
    const what = `GET s3://${loc.bucket}/${key}${range ? ` bytes ${range.offset}+${range.bytes}` : ''}`;
    return this.call(
      what,
      async (abortSignal) => {
        const r = await this.client.send(
          new GetObjectCommand({
            Bucket: loc.bucket,
            Key: key,
            ...(range ? { Range: `bytes=${range.offset}-${range.offset + range.bytes - 1}` } : {}),
          }),
          { abortSignal },
        );
        const body = Buffer.from(await r.Body!.transformToByteArray());
        if (range && body.length !== range.bytes)
          throw new VmsynthError('VMS_OBJECT_STORE', `${what}: got ${body.length} bytes`, {
            details: { reason: 'error' },
          });
        return body;
      },
      signal,
    );
  }

  /** An object's size, or null when it does not exist. */
  async size(loc: S3Location, name: string, signal?: AbortSignal): Promise<number | null> {
    const key = keyOf(loc, name);
    try {
      return await this.call(
        `HEAD s3://${loc.bucket}/${key}`,
        async (abortSignal) =>
          (await this.client.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: key }), { abortSignal }))
            .ContentLength ?? 0,
        signal,
      );
    } catch (err) {
      if ((err as VmsynthError).details?.reason === 'not-found') return null;
      throw err;
    }
  }

  /** Uploads a file as object `name` (multipart when large); `onProgress` gets bytes sent so far. */
  async putFile(
    loc: S3Location,
    name: string,
    file: string,
    onProgress?: (sent: number, total: number) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    const key = keyOf(loc, name);
    const total = (await fsp.stat(file)).size;
    // A large upload takes as long as it takes; each of its parts still has the per-request timeout.
    await this.call(
      `PUT s3://${loc.bucket}/${key}`,
      async (abortSignal) => {
        const abortController = new AbortController();
        abortSignal.addEventListener('abort', () => abortController.abort(abortSignal.reason), { once: true });
        const upload = new Upload({
          client: this.client,
          params: { Bucket: loc.bucket, Key: key, Body: createReadStream(file), ContentLength: total },
          queueSize: 4,
          partSize: 16 << 20,
          abortController,
        });
        upload.on('httpUploadProgress', (p) => onProgress?.(p.loaded ?? 0, total));
        await upload.done();
      },
      signal,
      Math.round(Math.max(this.timeoutMs, 60_000 + total / 10_000)), // at least 10 MB/s
    );
  }

  /** Downloads object `name` to `dest` (written beside it, then renamed). */
  async getFile(
    loc: S3Location,
    name: string,
    dest: string,
    onProgress?: (got: number, total: number) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    const key = keyOf(loc, name);
    const tmp = `${dest}.tmp-${process.pid}`;
    try {
      await this.call(
        `GET s3://${loc.bucket}/${key}`,
        async (abortSignal) => {
          const r = await this.client.send(new GetObjectCommand({ Bucket: loc.bucket, Key: key }), { abortSignal });
          const total = r.ContentLength ?? 0;
          let got = 0;
          const body = r.Body as Readable;
          body.on('data', (c: Buffer) => onProgress?.((got += c.length), total));
          await pipeline(body, createWriteStream(tmp), { signal: abortSignal });
        },
        signal,
        Math.max(this.timeoutMs, 10 * 60_000),
      );
      await fsp.rename(tmp, dest);
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  }

  close(): void {
    this.client.destroy();
  }
}
