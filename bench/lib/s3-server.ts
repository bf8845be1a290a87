/**
 * An S3-API server for the benches' object-store rows: s3rver (a dev
 * dependency) on 127.0.0.1, its data in a directory of the bench's, one
 * bucket. It stands for the cloudlet's backhaul to an object store: on this
 * host, loopback, faster than any link the client is shaped to.
 */
import S3rver from 's3rver';

export const BENCH_S3_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export async function startBenchS3(dir: string, bucket: string): Promise<{ endpoint: string; close(): Promise<void> }> {
  const server = new S3rver({
    port: 0,
    address: '127.0.0.1',
    silent: true,
    directory: dir,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  const { port } = await server.run();
  return { endpoint: `http://127.0.0.1:${port}`, close: () => server.close() };
}
