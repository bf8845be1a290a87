/**
 * What a cloudlet offers, as its `info` answer says (`vmsynth discover`): its
 * accelerator, the bases it holds (named by their images' SHA-256, as an
 * overlay names its base) and its load.
 */
import { VMSYNTH_VERSION } from '../core/version.js';
import { MAX_INFO_BASES, type ServerMessage } from '../protocol/messages.js';
import { detectAccel, type Accel } from '../vm/accel.js';
import { listBases } from '../vm/base.js';

export type CloudletInfo = Omit<Extract<ServerMessage, { type: 'info' }>, 'type'>;

/** The info of this cloudlet now; the accelerator is detected once per server. */
export function cloudletInfo(load: () => { sessions: number; maxSessions: number }): () => Promise<CloudletInfo> {
  let accel: Promise<Accel> | null = null;
  return async () => {
    accel ??= detectAccel().then((c) => c.accel);
    const bases = (await listBases())
      .filter((b) => b.ok)
      .slice(0, MAX_INFO_BASES)
      .map((b) => ({ name: b.name, disk: b.manifest!.disk.sha256, memory: b.manifest!.memory.sha256 }));
    return { server: `vmsynth ${VMSYNTH_VERSION}`, accel: await accel, bases, ...load() };
  };
}
