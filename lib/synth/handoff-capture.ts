/**
 * A synthesis session's VM as the source of a handoff: pre-copy passes over
 * what it changed since synthesis (handoff/delta.ts over
 * handoff/vm-changes.ts, reading the launch images through this process's
 * own chunk maps), the stop with its device state, and going on here when
 * the handoff fails before the target resumed. The conversation with the
 * target is the server's (server/handoff-out.ts).
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { VmsynthError } from '../core/errors.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { DeltaTracker, type DeltaPass, type DeltaReaders } from '../handoff/delta.js';
import { vmChanges } from '../handoff/vm-changes.js';
import { chunkKey } from '../overlay/format.js';
import type { SynthSession } from './session.js';

export class HandoffCapture {
  private readonly tracker: DeltaTracker;
  private readonly inherited: [number[], number[]];
  private base: FileHandle[] = [];

  constructor(private readonly session: SynthSession) {
    const launch = session.launch;
    this.inherited = launch.deltaChunks();
    const keys = new Set<number>();
    this.inherited.forEach((list, image) => list.forEach((i) => keys.add(chunkKey(image, i))));
    this.tracker = new DeltaTracker(launch.overlaySegments, keys);
  }

  /** The VM must run with its whole overlay here: a pass reads the launch images. */
  static check(session: SynthSession): void {
    if (session.progress().resumedMs === null)
      throw new VmsynthError('VMS_HANDOFF', `session ${session.id}'s VM is not running yet: hand it off once it runs`);
    if (session.launch.missingChunks > 0)
      throw new VmsynthError(
        'VMS_HANDOFF',
        `session ${session.id}'s overlay has not all arrived yet: hand it off once it has (the "complete" event)`,
        { details: { missingChunks: session.launch.missingChunks } },
      );
  }

  private readers(): DeltaReaders {
    const images = this.session.launch.views;
    return {
      launch: async (image, index, out) => {
        const n = await images[image].read(out, CHUNK_SIZE, index * CHUNK_SIZE);
        if (n < CHUNK_SIZE) out.fill(0, n);
      },
      base: async (image, index, out) => {
        const { bytesRead } = await this.base[image]!.read(out, 0, CHUNK_SIZE, index * CHUNK_SIZE);
        if (bytesRead < CHUNK_SIZE) out.fill(0, bytesRead);
      },
    };
  }

  /** One pass: what changed since the last (the first: since synthesis), packed at zstd `level`. */
  async pass(level: number, signal?: AbortSignal): Promise<DeltaPass> {
    if (this.base.length === 0)
      this.base = await Promise.all(this.session.launch.baseFiles.map((f) => fsp.open(f, 'r')));
    const vm = this.session.vm;
    const restored = vm.restored;
    if (!restored) throw new VmsynthError('VMS_HANDOFF', `session ${this.session.id}'s VM is not running`);
    const readers = this.readers();
    const changes = vmChanges({
      pid: await vm.qemuPid(),
      memoryFile: this.session.launch.mounted().memory,
      diskLayer: restored.diskLayer,
      inherited: this.inherited,
      readers,
    });
    return this.tracker.pass(changes, readers, { level, ...(signal ? { signal } : {}) });
  }

  /** Stops the VM; returns its device state without RAM and its generation ID. */
  async stop(): Promise<{ deviceState: Buffer; genid: string | null }> {
    const deviceState = await this.session.vm.stopForHandoff();
    return { deviceState, genid: this.session.vm.restored?.spec.genid ?? null };
  }

  /** The handoff failed before the target resumed: the VM goes on here. */
  async resumeHere(): Promise<void> {
    await this.session.vm.continueAfterHandoff();
  }

  async close(): Promise<void> {
    await Promise.all(this.base.map((h) => h.close()));
    this.base = [];
  }
}
