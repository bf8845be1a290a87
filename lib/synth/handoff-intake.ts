/**
 * A synthesis session as the target of a handoff (SynthOptions.incoming):
 * the delta segments of each pass announced to its launch images, then
 * applied through the one segment pipeline, and the VM resumed from the
 * source's device state once the last pass's tables are in, before its
 * segments are (early start: a guest read of a chunk still missing waits
 * for its segment, and `deltaDemand` asks the source for it).
 *
 * Passes are announced strictly in order, each once the previous one is
 * applied: a chunk is then never marked present with an older pass's bytes
 * while the VM may read it. The conversation with the source is the
 * server's (server/handoff-in.ts).
 */
import { VmsynthError } from '../core/errors.js';
import type { DeltaTable } from '../protocol/handoff-messages.js';
import { Priority } from './segment-pipeline.js';
import type { SynthSession } from './session.js';

export class HandoffIntake {
  /** Applies of the pass announced last, and the chain that announces the next. */
  private applies: Promise<void>[] = [];
  private announced: Promise<unknown> = Promise.resolve();
  /** Delta segments announced (their table is in the images) and not yet received. */
  private readonly waiting = new Map<number, (data: Buffer) => void>();
  /** Delta segments received before their pass was announced. */
  private readonly early = new Map<number, Buffer>();
  private readonly demanded = new Set<number>();
  private finalCount = -1;
  private finalApplied = 0;
  private failure: VmsynthError | null = null;

  constructor(
    private readonly session: SynthSession,
    /** A delta segment failed to apply: the handoff cannot finish. */
    private readonly failed: (err: VmsynthError) => void,
    /** Every chunk of the final pass is here: the source may let go. */
    private readonly done: () => void,
  ) {}

  /** A pre-copy pass's tables; resolves once the pass is applied (rejects when the handoff failed). */
  async pass(tables: DeltaTable[]): Promise<void> {
    await Promise.all(await this.announce(tables, false));
    if (this.failure) throw this.failure;
  }

  /**
   * The last pass's tables and the device state: the VM resumes as soon as the tables are
   * announced, or (`whole`) once every segment of the last pass is applied.
   */
  final(tables: DeltaTable[], deviceState: Uint8Array, genid: string | null, whole = false): Promise<void> {
    this.finalCount = tables.length;
    return this.announce(tables, true).then(async (applies) => {
      if (whole) await Promise.all(applies);
      if (this.failure) throw this.failure;
      this.session.vm.startHandedOff(deviceState, genid ?? undefined);
      if (tables.length === 0) this.done();
    });
  }

  /** Announces a pass once the previous one is applied; resolves with its applies. */
  private announce(tables: DeltaTable[], last: boolean): Promise<Promise<void>[]> {
    const announced = this.announced.then(async () => {
      // Every segment of the previous pass is applied before this one's chunks are announced.
      await Promise.all(this.applies);
      if (this.failure) throw this.failure;
      this.applies = tables.map((t) => {
        this.session.launch.expectDelta(t.index, { ...t, offset: 0 });
        return this.arrival(t.index, last);
      });
      return this.applies;
    });
    this.announced = announced.then(() => undefined);
    this.announced.catch(() => undefined); // (the caller of pass or final hears it)
    return announced;
  }

  /** Resolves once segment `index` has arrived and is applied. */
  private arrival(index: number, last: boolean): Promise<void> {
    const got = new Promise<Buffer>((resolve) => {
      const early = this.early.get(index);
      if (early) {
        this.early.delete(index);
        resolve(early);
      } else this.waiting.set(index, resolve);
    });
    return got
      .then((data) =>
        this.session.launch.apply(index, data, this.demanded.has(index) ? Priority.DEMAND : Priority.BACKGROUND),
      )
      .then(
        () => {
          if (last && ++this.finalApplied === this.finalCount) this.done();
        },
        (err: unknown) => {
          this.failure ??= new VmsynthError('VMS_HANDOFF', `delta segment ${index} did not apply: ${String(err)}`, {
            cause: err,
          });
          this.failed(this.failure);
        },
      );
  }

  /** A delta segment arrived from the source. */
  segment(index: number, data: Buffer): void {
    const take = this.waiting.get(index);
    if (take) {
      this.waiting.delete(index);
      take(data);
    } else {
      this.early.set(index, data);
    }
  }

  /** A guest read waits for delta segment `index`: true when it is still to come (ask the source for it first). */
  demand(index: number): boolean {
    this.demanded.add(index);
    if (this.waiting.has(index)) return true;
    this.session.launch.promote(index);
    return false;
  }
}
