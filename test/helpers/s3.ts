/**
 * A real S3-API server for the tests: s3rver on loopback, its data in a
 * temporary directory, with one bucket made. s3rver knows one access key,
 * S3RVER: a request signed with another is refused with 403, as a real store
 * refuses it (it does not check the secret; seen by hand).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import S3rver from 's3rver';

export const S3_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export interface TestS3 {
  endpoint: string;
  bucket: string;
  close(): Promise<void>;
}

export async function startS3(bucket = 'vmsynth-test'): Promise<TestS3> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-s3-'));
  const server = new S3rver({
    port: 0,
    address: '127.0.0.1',
    silent: true,
    directory: dir,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  const { port } = (await server.run()) as { port: number };
  return {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    close: async () => {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
