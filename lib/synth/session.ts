/**
 * One synthesis session on the server: a launch VM built from a base and an
 * overlay whose segments are still arriving. It owns the run directory, the
 * launch images (chunk maps, segment pipeline, FUSE mount: here, or in a
 * keeper process), the scheduler, the ledger and the VM; it speaks to the
 * network only through its events. close() destroys the VM, fails held reads,
 * unmounts and removes the files, whatever state the session reached; with a
 * keeper, release() leaves all that to the keeper, and `adopt` takes it back
 * in a later server. Policies: early-start resumes at once and streams in the
 * background; demand-only fetches only what the guest reads; baseline
 * applies everything, then resumes.
 */
import { promises as fsp } from 'node:fs';
import { DEFAULTS } from '../core/defaults.js';
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { Scope } from '../core/scope.js';
import { SegmentScheduler } from '../stream/scheduler.js';
import type { HttpReply } from '../vm/guest-app.js';
import { RunDir } from '../vm/run-dir.js';
import { LaunchImages } from './launch-images.js';
import { LaunchVm } from './launch-vm.js';
import { SessionLedger, unexpectedSegment, type SynthStats } from './ledger.js';
import { Priority } from './segment-pipeline.js';
import { SegmentSources, type Outstanding, type SegmentOrigin } from './segment-sources.js';
import type { SynthOptions } from './session-options.js';
import { MANIFEST_FILE, RecordWriter, type SynthRecord } from './session-record.js';

export type { SynthStats } from './ledger.js';
export type { SynthEvents, SynthOptions } from './session-options.js';

export class SynthSession {
  readonly id: string;
  private readonly scope = new Scope();
  private readonly scheduler: SegmentScheduler;
  private readonly ledger: SessionLedger;
  /** The launch images and the VM; a handoff reads them (a source's passes) or feeds them (a target's delta). */
  launch!: LaunchImages;
  vm!: LaunchVm;
  private closing: Promise<SynthStats> | null = null;
  private failedWith: VmsynthError | null = null;
  /** The store and the object store, before the client. */
  private readonly sources: SegmentSources;
  /** Adopting a keeper's session: demands its held reads make wait until its applied segments are known. */
  private adopting: boolean;
  private readonly demandedWhileAdopting: number[] = [];
  private readonly record: RecordWriter | null = null;

  private constructor(
    private readonly opts: SynthOptions,
    private readonly dir: RunDir,
  ) {
    this.id = dir.id;
    this.adopting = !!opts.adopt;
    if (opts.keeper || opts.adopt) {
      const url = opts.keeper?.overlayUrl ?? opts.adopt?.overlayUrl;
      this.record = new RecordWriter(
        dir.dir,
        { ...(url ? { overlayUrl: url } : {}), lookaside: !!opts.lookaside },
        (error) => publish('cleanupFailed', { what: `write the record of session ${this.id}`, error }),
      );
    }
    const body = opts.overlay.body;
    this.scheduler = new SegmentScheduler({
      sizes: body.segments.map((s) => s.bytes),
      maxInFlightBytes: opts.maxInFlightBytes,
      background: opts.policy !== 'demand-only',
    });
    this.ledger = new SessionLedger(opts.policy, body.segments.length, opts.overlay.segmentsBytes);
    const wanted = (index: number) => !this.failedWith && !this.closing && this.scheduler.isRequested(index);
    this.sources = new SegmentSources(
      opts.store,
      opts.objects,
      {
        got: (index, data, from) => wanted(index) && this.apply(index, data, from),
        lost: (index) => wanted(index) && this.ask(this.lane(index), [index]),
        hedge: (index, afterMs) => {
          if (!wanted(index)) return;
          publish('objectStoreHedge', { session: this.id, segment: index, afterMs });
          this.opts.events.want('demand', [index]);
        },
      },
      opts.store && opts.lookaside
        ? { segments: body.segments, base: [opts.base.file('memory'), opts.base.file('disk')] }
        : null,
    );
  }

  private lane(index: number): 'demand' | 'background' {
    return this.scheduler.isDemanded(index) ? 'demand' : 'background';
  }

  /** Sets up the session's files and pipeline (or adopts them, with `adopt`); run() then starts it. */
  static async start(opts: SynthOptions): Promise<SynthSession> {
    const dirScope = new Scope();
    let made: SynthSession | null = null;
    try {
      const dir = opts.adopt ? await RunDir.adopt(dirScope, opts.id!) : await RunDir.create(dirScope, opts.id);
      const s = (made = new SynthSession(opts, dir));
      s.scope.defer('remove the run directory', () => dirScope.close(), { lasting: true });
      s.scope.defer('stop the segment sources', () => s.sources.close());
      if (opts.keeper && !opts.adopt) await fsp.writeFile(dir.file(MANIFEST_FILE), opts.keeper.manifest);
      s.launch = await LaunchImages.create(
        {
          body: opts.overlay.body,
          base: [opts.base.file('memory'), opts.base.file('disk')],
          dir: s.dir.dir,
          demand: (segment) => s.onDemand(segment),
          unblocked: (ms) => publish('readUnblocked', { session: s.id, ms }),
          threads: opts.threads ?? DEFAULTS.threads,
          ...(opts.keeper
            ? { keeper: { session: s.id, domain: s.domain, graceMs: opts.keeper.graceMs, pool: opts.keeper.pool } }
            : {}),
          adopt: !!opts.adopt,
        },
        s.scope,
      );
    } catch (err) {
      await (made ? made.scope.close() : dirScope.close());
      throw err;
    }
    const s = made;
    s.vm = new LaunchVm({
      ...opts,
      id: s.id,
      dir: s.dir,
      launch: s.launch,
      scope: s.scope,
      ledger: s.ledger,
      ended: () => s.failedWith ?? (s.closing ? new VmsynthError('VMS_INTERRUPTED', 'the session ended') : null),
      fail: (err) => s.fail(err),
      ready: (ms) => {
        void s.saveRecord();
        opts.events.ready(ms);
      },
      firstResponse: () => {
        void s.saveRecord();
        s.sources.open();
      },
      heldReads: () => s.heldReads(),
    });
    if (opts.adopt) await s.adopted(opts.adopt);
    return s;
  }

  /** Takes over the keeper's applied segments and the running VM of an adopted session. */
  private async adopted(r: SynthRecord): Promise<void> {
    try {
      for (const i of this.launch.adoptedSegments) this.scheduler.adopted(i);
      this.ledger.adopted({ resumedMs: r.resumedMs, completeMs: r.completeMs, firstResponseMs: r.firstResponseMs });
      if (r.hostPort === null)
        throw new VmsynthError('VMS_SESSION_GONE', `session ${this.id} has no running VM to adopt`);
      await this.vm.adopt(r.hostPort);
    } catch (err) {
      await this.scope.close();
      throw err;
    }
    this.adopting = false;
    for (const segment of this.demandedWhileAdopting.splice(0)) this.onDemand(segment);
  }

  /** Keeps what a server adopting this session needs in the run directory (keeper sessions only). */
  private saveRecord(): Promise<void> | undefined {
    const { vm, ledger: l } = this;
    const at = { resumedMs: l.resumedMs, completeMs: l.completeMs, firstResponseMs: l.firstResponseMs };
    return this.record?.save({ hostPort: vm.hostPort, ...at });
  }

  /** Asks for the first segments and, unless baseline, resumes the VM now (lookaside waits for an early start's first response). */
  run(): void {
    if (this.opts.adopt) {
      this.sources.open();
      return this.scheduler.done ? undefined : this.pump();
    }
    if (this.opts.policy !== 'early-start') this.sources.open();
    this.pump();
    if (this.opts.policy !== 'baseline' && !this.opts.incoming) this.vm.start();
    else if (this.scheduler.done) this.onComplete();
  }

  /** Takes every segment the scheduler allows now from a source, or asks the client for it (grouped by lane). */
  private pump(): void {
    if (this.failedWith || this.closing) return;
    const ask = { demand: [] as number[], background: [] as number[] };
    const tables: number[] = [];
    for (const r of this.scheduler.drain()) {
      if (this.sources.take(r.index, r.lane === 'demand')) continue;
      if (r.lane === 'background' && this.sources.wantsTable(r.index)) tables.push(r.index);
      else ask[r.lane].push(r.index);
    }
    this.ask('demand', ask.demand);
    this.ask('background', ask.background);
    if (tables.length === 0) return;
    for (const i of tables) this.sources.askTable(i);
    this.sources.asked(tables);
    this.opts.events.tables(tables);
  }

  /** A segment's digest table arrived (chunk lookaside): ask for the segment thin, or whole. */
  async receiveTable(index: number, data: Buffer): Promise<void> {
    if (this.failedWith || this.closing || index >= this.scheduler.total) return;
    const plan = await this.sources.table(index, data);
    if (plan === 'ignored' || this.failedWith || this.closing) return;
    this.ledger.table(data.length);
    if (plan) this.opts.events.thin(this.lane(index), index, plan.omit);
    else this.opts.events.want(this.lane(index), [index]);
  }

  private ask(lane: 'demand' | 'background', segments: number[]): void {
    if (segments.length === 0) return;
    this.sources.asked(segments);
    this.opts.events.want(lane, segments);
  }

  private onDemand(segment: number): void {
    if (this.adopting) return void this.demandedWhileAdopting.push(segment);
    if (segment >= this.scheduler.total) return this.opts.events.deltaDemand?.(segment); // a handoff's delta
    const before = this.scheduler.outOfOrder;
    if (this.scheduler.demand(segment)) {
      this.ledger.demandFetches++;
      publish('demandFetch', { session: this.id, segment, outOfOrder: false });
      this.pump();
    } else {
      if (this.scheduler.outOfOrder > before) {
        publish('demandFetch', { session: this.id, segment, outOfOrder: true });
        // Asked in the background: it may wait in the client's queue, or for its table (then: whole, now).
        if (this.sources.cancelTable(segment)) this.opts.events.want('demand', [segment]);
        else if (!this.ledger.isApplying(segment) && !this.sources.promote(segment)) this.opts.events.hurry([segment]);
      }
      this.launch?.promote(segment);
    }
  }

  /** A segment arrived from the client (`thin`: without the payloads a `thin` message named). */
  receive(index: number, data: Buffer, thin = false): void {
    if (this.failedWith || this.closing) return;
    const copy = index < this.scheduler.total ? this.sources.clientCopy(index, data.length) : 'refuse';
    if (copy === 'drop') return; // a hedge the object store won
    const asked = copy === 'use' && this.scheduler.isRequested(index);
    const refused = unexpectedSegment(index, asked, this.ledger.isApplying(index));
    if (refused) return this.fail(refused);
    if (!thin) {
      this.sources.settleThin(index, null); // asked thin, sent whole: fine
      return this.apply(index, data, 'client');
    }
    let raw: Buffer;
    try {
      raw = this.sources.rebuild(index, data);
    } catch (err) {
      const e = asVmsynthError(err);
      if (e.code === 'VMS_PROTOCOL') return this.fail(e);
      this.ledger.received(index, data.length, 'client');
      this.ledger.settled(index);
      return this.rejectThin(index);
    }
    this.apply(index, raw, 'client', data.length);
  }

  /** A thin segment did not check out: ask for it whole. */
  private rejectThin(index: number): void {
    this.sources.settleThin(index, false);
    publish('progress', { step: `session ${this.id}: thin segment ${index} failed its check; asking for it whole` });
    if (!this.ledger.mayRetry(index))
      return this.fail(new VmsynthError('VMS_OVERLAY_CORRUPT', `segment ${index} failed its check again`));
    this.scheduler.retry(index);
    this.pump();
  }

  /** Applies a segment from any source, checked alike (`thinBytes`: raw, rebuilt from a thin one that size). */
  private apply(index: number, data: Buffer, from: SegmentOrigin, thinBytes?: number): void {
    const rebuilt = thinBytes !== undefined;
    const bytes = thinBytes ?? data.length;
    this.ledger.received(index, bytes, from);
    const lane = this.lane(index);
    // The pipeline transfers the bytes to a worker thread: the store keeps a copy (raw if rebuilt: SessionSource.admitRebuilt).
    const keep = from !== 'store' && this.sources.keeps ? Buffer.from(data) : null;
    this.launch
      .apply(index, data, lane === 'demand' ? Priority.DEMAND : Priority.BACKGROUND, rebuilt)
      .finally(() => this.ledger.settled(index))
      .then(
        () => {
          publish('segmentApplied', { session: this.id, index, bytes, lane, from });
          const saved = rebuilt ? this.sources.settleThin(index, true) : null;
          if (saved) this.ledger.lookaside(saved.chunks, saved.bytes);
          if (from !== 'client') this.ledger.fromSource(from, bytes);
          this.sources.applied(index, bytes, from, keep, rebuilt);
          this.scheduler.received(index);
          // Failed or closing: no further (a baseline VM started after the teardown once leaked).
          if (this.closing || this.failedWith) return;
          if (this.scheduler.done) this.onComplete();
          else this.pump();
        },
        (err: unknown) => {
          const e = asVmsynthError(err);
          if (rebuilt && e.code === 'VMS_OVERLAY_CORRUPT' && !this.closing && !this.failedWith)
            return this.rejectThin(index);
          if (from !== 'client' && e.code === 'VMS_OVERLAY_CORRUPT' && !this.closing && !this.failedWith) {
            // A stored or fetched copy that fails its check is never used: the client sends it instead.
            publish('progress', { step: `session ${this.id}: segment ${index} from the ${from} failed its check` });
            void this.sources
              .rejected(index, from, e)
              .catch(() => false)
              .then((clientSends) => {
                if (clientSends) return; // asked of the client as a hedge already
                this.scheduler.retry(index);
                this.pump();
              });
          } else if (e.code === 'VMS_OVERLAY_CORRUPT' && !this.closing && this.ledger.mayRetry(index)) {
            publish('progress', { step: `session ${this.id}: segment ${index} failed its check; asking for it again` });
            this.scheduler.retry(index);
            this.pump();
          } else {
            this.fail(e);
          }
        },
      );
  }

  private onComplete(): void {
    const ms = this.ledger.complete();
    void this.saveRecord();
    publish('overlayComplete', { session: this.id, ms });
    this.opts.events.complete(ms);
    if (this.opts.policy === 'baseline' && !this.opts.incoming) this.vm.start();
  }

  private fail(err: VmsynthError): void {
    if (this.failedWith || this.closing) return;
    this.failedWith = err;
    this.vm?.wake();
    this.opts.events.failed(err);
  }

  /** Segments asked for and not yet received, by lane, and what lookaside asked for (SegmentSources.outstanding). */
  outstanding(): Outstanding {
    if (this.failedWith || this.closing) return { demand: [], background: [], tables: [], thin: [] };
    return this.sources.outstanding(this.scheduler.requested(), (i) => this.ledger.isApplying(i));
  }

  progress(): { resumedMs: number | null; appliedMs: number | null } {
    return { resumedMs: this.ledger.resumedMs, appliedMs: this.ledger.completeMs };
  }

  /** The held guest reads, each segment they wait for with where it is: queued, requested, applying (received, not yet applied) or received. */
  private heldReads(): SynthStats['heldReads'] {
    return this.ledger.held(this.launch.heldReads(), (i) => this.scheduler.stateOf(i));
  }

  stats(): SynthStats {
    return this.ledger.stats({
      outOfOrder: this.scheduler.outOfOrder,
      blockedReads: this.launch.blockedReads(),
      heldReads: this.heldReads(),
      hedges: this.sources.hedges.stats(),
    });
  }

  /** The launch images as FUSE serves them (tests compare them with an offline apply). */
  get mountpoint(): string {
    return this.dir.file('mnt');
  }

  get domain(): string {
    return this.dir.domainName;
  }

  /** Forwards an offload request to the app in the VM (LaunchVm.offload). */
  offload(method: string, path: string, body: Buffer, timeoutMs?: number): Promise<HttpReply> {
    return this.vm.offload(method, path, body, timeoutMs);
  }

  /** Leaves the session to its keeper for a later server: the VM, the mount and the run directory stay. */
  release(): Promise<SynthStats> {
    this.closing ??= (async () => {
      const stats = this.stats();
      this.vm?.abortResume();
      await this.vm?.settled();
      await this.saveRecord();
      await this.scope.release();
      return stats;
    })();
    return this.closing;
  }

  /** Destroys the VM, fails held reads, unmounts, stops the workers and removes the files. Idempotent. */
  close(): Promise<SynthStats> {
    this.closing ??= (async () => {
      const stats = this.stats();
      this.vm?.abortResume();
      // Held reads fail first: a resume may wait on one, and a vCPU blocked in one keeps QEMU from exiting.
      this.launch?.failHeldReads();
      // Let a resume in progress reach a step boundary, so whatever it acquired is in the scope.
      await this.vm?.settled();
      await this.scope.close();
      return stats;
    })();
    return this.closing;
  }
}
