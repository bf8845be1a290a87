/**
 * A real S3-API server for the tests: the benches' s3rver on loopback
 * (bench/lib/s3-server.ts), its data in a temporary directory, with one
 * bucket made. s3rver knows one access key, S3RVER: a request signed with
 * another is refused with 403, as a real store refuses it (it does not check
 * the secret; seen by hand).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BENCH_S3_CREDENTIALS, startBenchS3 } from '../../bench/lib/s3-server.js';

export const S3_CREDENTIALS = BENCH_S3_CREDENTIALS;

export interface TestS3 {
  endpoint: string;
  bucket: string;
  close(): Promise<void>;
}

export async function startS3(bucket = 'vmsynth-test'): Promise<TestS3> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-s3-'));
  const s3 = await startBenchS3(dir, bucket);
  return {
    endpoint: s3.endpoint,
    bucket,
    close: async () => {
      await s3.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
