#!/usr/bin/env node
/**
 * `npm run bench`'s executable: sizes libuv's thread pool, then loads the
 * benchmarks. The suite and the first-response bench embed SynthServer and
 * resume VMs over FUSE in this process, so they need the pool the `vmsynth`
 * executable sets (lib/cli/entry.cts says why, and why this file is
 * CommonJS); until 2026-11-22 the bench ran with libuv's default 4 threads.
 */
process.env.UV_THREADPOOL_SIZE ??= '64';
void import('./main.js');
