/**
 * One synthesis session on the server: a launch VM built from a base and an
 * overlay whose segments are still arriving.
 *
 * It owns the run directory, the launch images (LaunchImages: chunk maps
 * with overlay chunks MISSING until their segment is applied, the segment
 * pipeline, the FUSE mount), the segment scheduler (what to ask the client
 * for next), the bookkeeping (ledger.ts), and the VM (vm/restore.ts). It
 * speaks to the network only through `want` and its event callbacks, so the
 * server owns the sockets and the session owns everything that must be torn
 * down: close() destroys the VM, fails held reads, unmounts, and removes the
 * files, whatever state the session reached.
 *
 * Policies: early-start resumes the VM at once and streams in the
 * background; demand-only resumes at once and fetches only what the guest
 * reads; baseline fetches and applies everything, then resumes.
 */
import { setMaxListeners } from 'node:events';
import { DEFAULTS } from '../core/defaults.js';
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { Scope } from '../core/scope.js';
import type { Overlay } from '../overlay/reader.js';
import type { Policy } from '../protocol/messages.js';
import type { ObjectSource } from '../store/object-source.js';
import type { SessionSource } from '../store/session-source.js';
import { SegmentScheduler } from '../stream/scheduler.js';
import type { Base } from '../vm/base.js';
import { askApp, type HttpReply } from '../vm/guest-app.js';
import type { Libvirt } from '../vm/libvirt.js';
import { explainFailure, type RunningVm } from '../vm/machine.js';
import { restoreVm, type RestoredVm } from '../vm/restore.js';
import { RunDir } from '../vm/run-dir.js';
import { LaunchImages } from './launch-images.js';
import { describeHeld, SessionLedger, unexpectedSegment, type SynthStats } from './ledger.js';
import { Priority } from './segment-pipeline.js';
import { SegmentSources, type SegmentOrigin } from './segment-sources.js';

export type { SynthStats } from './ledger.js';

export interface SynthEvents {
  /** Ask the client for these segments. */
  want(lane: 'demand' | 'background', segments: number[]): void;
  /** A blocked guest read needs these segments, already asked for in the background: the client should send them next. */
  hurry(segments: number[]): void;
  /** The VM is running. */
  ready(resumedMs: number): void;
  /** Every segment has been applied. */
  complete(appliedMs: number): void;
  /** The session cannot go on (the caller closes it). */
  failed(err: VmsynthError): void;
}

export interface SynthOptions {
  overlay: Overlay;
  base: Base;
  policy: Policy;
  lv: Libvirt;
  events: SynthEvents;
  /** Worker threads for verify + decompress + apply (default: DEFAULTS.threads). */
  threads?: number;
  /** Background bytes requested and not yet applied (default: DEFAULTS.maxInFlightKib). */
  maxInFlightBytes?: number;
  fuseDevice?: string;
  /** The session id (vm/run-dir.ts newRunId); default a new one. */
  id?: string;
  /** The cloudlet store, as this session sees it: segments it holds are taken from it, not asked of the client. */
  store?: SessionSource;
  /** The object store the client named the overlay by: segments the store lacks are fetched from it first. */
  objects?: ObjectSource;
}

export class SynthSession {
  readonly id: string;
  private readonly scope = new Scope();
  private readonly scheduler: SegmentScheduler;
  private readonly ledger: SessionLedger;
  private launch!: LaunchImages;
  private vm: RestoredVm | null = null;
  private closing: Promise<SynthStats> | null = null;
  /** Aborted by close(): a resume in progress stops at its next step. */
  private readonly abort = new AbortController();
  private resuming: Promise<unknown> = Promise.resolve();
  private failedWith: VmsynthError | null = null;
  /** Wakes offload requests that came before the VM ran: when it runs, or when the session fails or closes. */
  private readonly vmChanged = new EventTarget();
  /** The store and the object store, before the client. */
  private readonly sources: SegmentSources;

  private constructor(
    private readonly opts: SynthOptions,
    private readonly dir: RunDir,
  ) {
    this.id = dir.id;
    setMaxListeners(0, this.vmChanged); // one listener per offload request waiting (bounded by maxOffloadsInFlight)
    const body = opts.overlay.body;
    this.scheduler = new SegmentScheduler({
      sizes: body.segments.map((s) => s.bytes),
      maxInFlightBytes: opts.maxInFlightBytes,
      background: opts.policy !== 'demand-only',
    });
    this.ledger = new SessionLedger(opts.policy, body.segments.length, opts.overlay.segmentsBytes);
    const wanted = (index: number) => !this.failedWith && !this.closing && this.scheduler.isRequested(index);
    this.sources = new SegmentSources(opts.store, opts.objects, {
      got: (index, data, from) => wanted(index) && this.apply(index, data, from),
      lost: (index) => wanted(index) && this.ask(this.scheduler.isDemanded(index) ? 'demand' : 'background', [index]),
    });
  }

  /** Sets up the session's files and pipeline; run() then starts it. */
  static async start(opts: SynthOptions): Promise<SynthSession> {
    const scope = new Scope();
    let s: SynthSession;
    try {
      s = new SynthSession(opts, await RunDir.create(scope, opts.id));
    } catch (err) {
      await scope.close();
      throw err;
    }
    s.scope.defer('remove the run directory', () => scope.close());
    s.scope.defer('stop the segment sources', () => s.sources.close());
    try {
      s.launch = await LaunchImages.create(
        {
          body: opts.overlay.body,
          base: [opts.base.file('memory'), opts.base.file('disk')],
          dir: s.dir.dir,
          demand: (segment) => s.onDemand(segment),
          unblocked: (ms) => publish('readUnblocked', { session: s.id, ms }),
          threads: opts.threads ?? DEFAULTS.threads,
        },
        s.scope,
      );
    } catch (err) {
      await s.scope.close();
      throw err;
    }
    return s;
  }

  /** Asks for the first segments and, unless baseline, resumes the VM now. */
  run(): void {
    this.pump();
    if (this.opts.policy !== 'baseline') this.resumeInBackground();
    else if (this.scheduler.done) this.onComplete();
  }

  /** Takes every segment the scheduler allows now from a source, or asks the client for it (grouped by lane). */
  private pump(): void {
    if (this.failedWith || this.closing) return;
    const ask = { demand: [] as number[], background: [] as number[] };
    for (const r of this.scheduler.drain())
      if (!this.sources.take(r.index, r.lane === 'demand')) ask[r.lane].push(r.index);
    this.ask('demand', ask.demand);
    this.ask('background', ask.background);
  }

  private ask(lane: 'demand' | 'background', segments: number[]): void {
    if (segments.length === 0) return;
    this.sources.asked(segments);
    this.opts.events.want(lane, segments);
  }

  private onDemand(segment: number): void {
    const before = this.scheduler.outOfOrder;
    if (this.scheduler.demand(segment)) {
      this.ledger.demandFetches++;
      publish('demandFetch', { session: this.id, segment, outOfOrder: false });
      this.pump();
    } else {
      if (this.scheduler.outOfOrder > before) {
        publish('demandFetch', { session: this.id, segment, outOfOrder: true });
        // Asked for in the background: it may still wait in the client's queue behind other background segments.
        if (!this.ledger.isApplying(segment) && !this.sources.promote(segment)) this.opts.events.hurry([segment]);
      }
      this.launch.promote(segment);
    }
  }

  /** A segment arrived from the client. */
  receive(index: number, data: Buffer): void {
    if (this.failedWith || this.closing) return;
    // The message parser guarantees an unsigned integer. A segment a source is fetching was not asked of the client.
    const asked = index < this.scheduler.total && this.scheduler.isRequested(index) && !this.sources.isFetching(index);
    const refused = unexpectedSegment(index, asked, this.ledger.isApplying(index));
    if (refused) this.fail(refused);
    else this.apply(index, data, 'client');
  }

  /** Verifies, decompresses and applies a segment from any source (the pipeline checks them all alike). */
  private apply(index: number, data: Buffer, from: SegmentOrigin): void {
    const bytes = data.length;
    this.ledger.received(index, bytes, from);
    const lane = this.scheduler.isDemanded(index) ? 'demand' : 'background';
    // The pipeline hands the bytes to a worker thread (transferred): the store keeps its own copy.
    const keep = from !== 'store' && this.sources.keeps ? Buffer.from(data) : null;
    this.launch
      .apply(index, data, lane === 'demand' ? Priority.DEMAND : Priority.BACKGROUND)
      .finally(() => this.ledger.settled(index))
      .then(
        () => {
          publish('segmentApplied', { session: this.id, index, bytes, lane, from });
          if (from !== 'client') this.ledger.fromSource(from, bytes);
          this.sources.applied(index, bytes, from, keep);
          this.scheduler.received(index);
          // A session that failed or is closing goes no further: a baseline session whose last
          // segment landed during its close started its VM after the teardown, and leaked it.
          if (this.closing || this.failedWith) return;
          if (this.scheduler.done) this.onComplete();
          else this.pump();
        },
        (err: unknown) => {
          const e = asVmsynthError(err);
          if (from !== 'client' && e.code === 'VMS_OVERLAY_CORRUPT' && !this.closing && !this.failedWith) {
            // A stored or fetched copy that fails its check is never used: the client sends it instead.
            publish('progress', { step: `session ${this.id}: segment ${index} from the ${from} failed its check` });
            void this.sources.rejected(index, from, e).finally(() => {
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
    publish('overlayComplete', { session: this.id, ms });
    this.opts.events.complete(ms);
    if (this.opts.policy === 'baseline') this.resumeInBackground();
  }

  private fail(err: VmsynthError): void {
    if (this.failedWith || this.closing) return;
    this.failedWith = err;
    this.vmChanged.dispatchEvent(new Event('change'));
    this.opts.events.failed(err);
  }

  private resumeInBackground(): void {
    if (this.closing || this.failedWith) return;
    this.resuming = this.resume().then(
      () => {
        const ms = this.ledger.resumed();
        publish('sessionResumed', { session: this.id, domain: this.domain, ms, policy: this.opts.policy });
        if (!this.closing) this.opts.events.ready(ms);
        this.vmChanged.dispatchEvent(new Event('change'));
      },
      (err: unknown) => this.fail(asVmsynthError(err)),
    );
  }

  /** Mounts the launch images and restores the VM from the overlay's device state; resolves when it runs. */
  private async resume(): Promise<void> {
    const { base, overlay } = this.opts;
    const signal = this.abort.signal;
    const images = await this.launch.mount(this.dir.file('mnt'), { fuseDevice: this.opts.fuseDevice }, this.scope);
    this.vm = await restoreVm(
      this.opts.lv,
      {
        base,
        run: this.dir,
        memory: { path: images.memory, share: false },
        disk: { path: images.disk },
        deviceState: overlay.deviceState(),
        appPort: overlay.body.vm.appPort,
        signal,
        onStarted: (vm) => this.watch(vm),
      },
      this.scope,
    );
    publish('domainRunning', { name: this.domain, ms: this.ledger.ms() });
  }

  /** The watchdog: a VM that dies mid-session ends the session now, not at the next offload request. */
  private watch(vm: RunningVm): void {
    const unwatch = vm.qmp.onQemuGone((err) => {
      if (this.closing || this.failedWith) return;
      void explainFailure(err, vm).then((e) => {
        const why = asVmsynthError(e);
        publish('vmDied', { session: this.id, domain: this.domain, error: why });
        this.fail(why);
      });
    });
    this.scope.defer('stop watching the VM', () => unwatch());
  }

  /**
   * Forwards an offload request to the app in the VM. Retries while the
   * app's port refuses connections (the guest's network stack may still be
   * faulting its pages in); a reply of any status is the answer.
   */
  async offload(
    method: string,
    path: string,
    body: Buffer,
    timeoutMs: number = DEFAULTS.offloadTimeoutMs,
  ): Promise<HttpReply> {
    // A request may come before the VM runs (the client sends its first one right after
    // `accepted`, which saves a round trip): it waits for the VM, and its time limit starts then.
    while (!this.vm && !this.closing && !this.failedWith)
      await new Promise<void>((resolve) => this.vmChanged.addEventListener('change', () => resolve(), { once: true }));
    const vm = this.vm;
    if (!vm) throw this.failedWith ?? new VmsynthError('VMS_INTERRUPTED', 'the session ended');
    const ended = () =>
      this.closing || this.failedWith
        ? (this.failedWith ?? new VmsynthError('VMS_INTERRUPTED', 'the session ended'))
        : null;
    const r = await askApp(vm.hostPort, { method, path, body }, Date.now() + timeoutMs, ended, () => vm.alive());
    if (r.reply) {
      const first = this.ledger.replied();
      if (first !== null) publish('firstResponse', { session: this.id, ms: first, policy: this.opts.policy });
      return r.reply;
    }
    const last = r.last;
    if (r.dead)
      throw await explainFailure(
        new VmsynthError('VMS_QEMU_DIED', `the VM stopped while an offload request waited (${last})`),
        vm,
      );
    const h = this.heldReads();
    throw new VmsynthError(
      'VMS_GUEST_TIMEOUT',
      `the app in the VM did not answer ${method} ${path} within ${timeoutMs} ms (last attempt: ${last})${describeHeld(h)}`,
      { details: { heldReads: h } },
    );
  }

  /** Segments asked for and not yet received, by lane: those being applied are not asked for again. */
  outstanding(): { demand: number[]; background: number[] } {
    const out = { demand: [] as number[], background: [] as number[] };
    if (this.failedWith || this.closing) return out;
    for (const r of this.scheduler.requested())
      if (!this.ledger.isApplying(r.index) && !this.sources.isFetching(r.index)) out[r.lane].push(r.index);
    return out;
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
    });
  }

  /** The launch images as FUSE serves them (tests compare them with an offline apply). */
  get mountpoint(): string {
    return this.dir.file('mnt');
  }

  get domain(): string {
    return this.dir.domainName;
  }

  /** Destroys the VM, fails held reads, unmounts, stops the workers and removes the files. Idempotent. */
  close(): Promise<SynthStats> {
    this.closing ??= (async () => {
      const stats = this.stats();
      this.abort.abort(new VmsynthError('VMS_INTERRUPTED', 'the session ended'));
      queueMicrotask(() => this.vmChanged.dispatchEvent(new Event('change'))); // (once `closing` is set)
      // Held guest reads fail first. A resume in progress may itself be waiting on one
      // (QEMU and libvirtd read the images while the domain starts and loads its state),
      // so it could never reach the step boundary awaited below; and a vCPU blocked in one
      // would keep QEMU from exiting on libvirt's SIGTERM (libvirt then waits 10 s for
      // SIGKILL) while that destroy call holds a thread of libuv's pool.
      this.launch?.failHeldReads();
      // Let a resume in progress reach a step boundary, so whatever it acquired is in the scope.
      await this.resuming.catch(() => undefined);
      await this.scope.close();
      return stats;
    })();
    return this.closing;
  }
}
