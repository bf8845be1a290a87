#!/usr/bin/env node
/**
 * The `vmsynth` executable: sizes libuv's thread pool, then loads the CLI.
 *
 * CommonJS on purpose: the pool reads UV_THREADPOOL_SIZE once, at its first
 * job, and Node's ES module loader already uses the pool to read the entry
 * module, so an ESM entry point is too late to set it (measured: 11 threads
 * either way from an ESM entry, 71 from this one with 64).
 *
 * Why a bigger pool: FUSE reads of the launch images are async file reads on
 * that pool, and so are libvirt calls (@unraid/libvirt's async workers). A
 * libvirt call can wait for QEMU, and QEMU for a FUSE read: with the default
 * 4 threads, a few sessions tearing down at once could hold every thread and
 * starve the very reads they wait for. Idle pool threads cost next to nothing.
 */
const THREADPOOL_SIZE = 64;
process.env.UV_THREADPOOL_SIZE ??= String(THREADPOOL_SIZE);
void import('./main.js');
