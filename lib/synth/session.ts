/**
 * One synthesis session on the server: a launch VM built from a base and an
 * overlay whose segments are still arriving.
 *
 * It owns the session directory, the launch images (LaunchImages: store
 * files, chunk maps with overlay chunks MISSING until their segment is
 * applied, the apply pipeline) and their FUSE mount, the segment scheduler
 * (what to ask the client for next), the apply pipeline, and the VM. It
 * speaks to the network only through `want` and its event callbacks, so the
 * server owns the sockets and the session owns everything that must be torn
 * down: close() destroys the VM, fails held reads, unmounts, and removes the
 * files, whatever state the session reached.
 *
 * Policies: early-start resumes the VM at once and streams in the
 * background; demand-only resumes at once and fetches only what the guest
 * reads; baseline fetches and applies everything, then resumes.
 */
import { promises as fsp } from 'node:fs';
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { exec } from '../core/exec.js';
import { freePort } from '../core/net.js';
import { Scope } from '../core/scope.js';
import { ImageMount } from '../fs/fuse-images.js';
import type { Overlay } from '../overlay/reader.js';
import type { Policy } from '../protocol/messages.js';
import { SegmentScheduler } from '../stream/scheduler.js';
import type { Base } from '../vm/base.js';
import { guestRequest, type HttpReply } from '../vm/guest-app.js';
import type { Libvirt } from '../vm/libvirt.js';
import { explainFailure, startVm, type RunningVm } from '../vm/machine.js';
import { loadState } from '../vm/migration.js';
import { restoreSpec } from '../vm/resume.js';
import { Session } from '../vm/session.js';
import type { BlockedReadStats } from './arrivals.js';
import { LaunchImages } from './launch-images.js';
import { Priority } from './stream-apply.js';

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
  /** Worker threads for verify + decompress + apply (default 2). */
  threads?: number;
  /** Background bytes requested and not yet applied (default 2 MiB). */
  maxInFlightBytes?: number;
  fuseDevice?: string;
}

export interface SynthStats {
  policy: Policy;
  segments: number;
  segmentsReceived: number;
  bytesReceived: number;
  overlayBytes: number;
  /** Segments asked for on the demand lane. */
  demandFetches: number;
  /** Guest reads that needed a segment already on its way in the background. */
  outOfOrder: number;
  /** Segments that failed their hash and were asked for again. */
  retries: number;
  blockedReads: BlockedReadStats;
  /** Guest reads still waiting for the overlay when the stats were taken (at the end: reads the session failed). */
  heldReads: { reads: number; oldestMs: number; segments: { index: number; state: string }[] };
  /** From session start (manifest accepted). */
  resumedMs: number | null;
  firstResponseMs: number | null;
  completeMs: number | null;
  bytesReceivedBeforeFirstResponse: number | null;
  segmentsReceivedBeforeFirstResponse: number | null;
}

export class SynthSession {
  readonly id: string;
  private readonly scope = new Scope();
  private readonly t0 = performance.now();
  private readonly scheduler: SegmentScheduler;
  private launch!: LaunchImages;
  private vm: RunningVm | null = null;
  private hostPort = 0;
  private readonly retried = new Set<number>();
  /** Segments received and not yet applied. */
  private readonly applying = new Set<number>();
  private closing: Promise<SynthStats> | null = null;
  /** Aborted by close(): a resume in progress stops at its next step. */
  private readonly abort = new AbortController();
  private resuming: Promise<unknown> = Promise.resolve();
  private failedWith: VmsynthError | null = null;
  private readonly s = {
    segmentsReceived: 0, bytesReceived: 0, demandFetches: 0, retries: 0,
    resumedMs: null as number | null, firstResponseMs: null as number | null, completeMs: null as number | null,
    bytesBefore: null as number | null, segmentsBefore: null as number | null,
  };

  private constructor(private readonly opts: SynthOptions, private readonly session: Session) {
    this.id = session.id;
    const body = opts.overlay.body;
    this.scheduler = new SegmentScheduler({
      sizes: body.segments.map((s) => s.bytes),
      maxInFlightBytes: opts.maxInFlightBytes,
      background: opts.policy !== 'demand-only',
    });
  }

  /** Sets up the session's files and pipeline; run() then starts it. */
  static async start(opts: SynthOptions): Promise<SynthSession> {
    const scope = new Scope();
    let s: SynthSession;
    try {
      const session = await Session.create(scope);
      s = new SynthSession(opts, session);
    } catch (err) {
      await scope.close();
      throw err;
    }
    s.scope.defer('remove the session directory', () => scope.close());
    try {
      await s.setUp();
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

  private async setUp(): Promise<void> {
    const { base, overlay } = this.opts;
    this.launch = await LaunchImages.create({
      body: overlay.body,
      base: [base.file('memory'), base.file('disk')],
      dir: this.session.dir,
      demand: (segment) => this.onDemand(segment),
      unblocked: (ms) => publish('readUnblocked', { session: this.id, ms }),
      threads: this.opts.threads ?? 2,
    }, this.scope);
  }

  private ms(): number {
    return Math.round(performance.now() - this.t0);
  }

  /** Sends every request the scheduler allows now, grouped by lane. */
  private pump(): void {
    if (this.failedWith || this.closing) return;
    const reqs = this.scheduler.drain();
    const demand = reqs.filter((r) => r.lane === 'demand').map((r) => r.index);
    const background = reqs.filter((r) => r.lane === 'background').map((r) => r.index);
    if (demand.length) this.opts.events.want('demand', demand);
    if (background.length) this.opts.events.want('background', background);
  }

  private onDemand(segment: number): void {
    const before = this.scheduler.outOfOrder;
    if (this.scheduler.demand(segment)) {
      this.s.demandFetches++;
      publish('demandFetch', { session: this.id, segment, outOfOrder: false });
      this.pump();
    } else {
      if (this.scheduler.outOfOrder > before) {
        publish('demandFetch', { session: this.id, segment, outOfOrder: true });
        // Asked for in the background: it may still wait in the client's queue behind other background segments.
        if (!this.applying.has(segment)) this.opts.events.hurry([segment]);
      }
      this.launch.applier.promote(segment);
    }
  }

  /** A segment arrived from the client. */
  receive(index: number, data: Buffer): void {
    if (this.failedWith || this.closing) return;
    // The message parser guarantees an unsigned integer.
    if (index >= this.scheduler.total || !this.scheduler.isRequested(index)) {
      this.fail(new VmsynthError('VMS_PROTOCOL', `segment ${index} was not asked for`, { details: { segment: index } }));
      return;
    }
    this.s.segmentsReceived++;
    this.s.bytesReceived += data.length;
    const demanded = this.scheduler.isDemanded(index);
    this.applying.add(index);
    this.launch.applier.apply(index, data, demanded ? Priority.DEMAND : Priority.BACKGROUND).finally(() => this.applying.delete(index)).then(
      () => {
        publish('segmentApplied', { session: this.id, index, bytes: data.length, lane: demanded ? 'demand' : 'background' });
        this.scheduler.received(index);
        if (this.scheduler.done) this.onComplete();
        else this.pump();
      },
      (err: unknown) => {
        const e = asVmsynthError(err);
        if (e.code === 'VMS_OVERLAY_CORRUPT' && !this.retried.has(index) && !this.closing) {
          this.retried.add(index);
          this.s.retries++;
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
    this.s.completeMs = this.ms();
    publish('overlayComplete', { session: this.id, ms: this.s.completeMs });
    this.opts.events.complete(this.s.completeMs);
    if (this.opts.policy === 'baseline') this.resumeInBackground();
  }

  private fail(err: VmsynthError): void {
    if (this.failedWith || this.closing) return;
    this.failedWith = err;
    this.opts.events.failed(err);
  }

  private resumeInBackground(): void {
    this.resuming = this.resume().then(
      (ms) => {
        this.s.resumedMs = ms;
        publish('sessionResumed', { session: this.id, domain: this.domain, ms, policy: this.opts.policy });
        if (!this.closing) this.opts.events.ready(ms);
      },
      (err: unknown) => this.fail(asVmsynthError(err)),
    );
  }

  /** Mounts the images and restores the VM from the overlay's device state; resolves when it runs. */
  private async resume(): Promise<number> {
    const { base, overlay } = this.opts;
    const stop = () => {
      if (this.abort.signal.aborted) throw new VmsynthError('VMS_INTERRUPTED', 'the session ended before the VM started');
    };
    const mount = await ImageMount.mount(this.session.file('mnt'), [this.launch.memory, this.launch.disk], { fuseDevice: this.opts.fuseDevice });
    this.scope.defer(`unmount ${mount.mountpoint}`, () => mount.unmount());
    // Runs before the unmount (steps run newest first): held reads get EIO, so nothing hangs the unmount.
    this.scope.defer('fail held guest reads', () => this.launch.arrivals.failAll());
    stop();
    const qcow = this.session.file('disk.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', mount.path('disk.img'), '-F', 'raw', qcow, String(overlay.body.base.disk.bytes)]);
    const stateFile = this.session.file('device.state');
    await fsp.writeFile(stateFile, overlay.deviceState());
    this.hostPort = await freePort();
    const spec = restoreSpec(base, this.session, { disk: { path: qcow, format: 'qcow2' }, memory: { path: mount.path('memory.img'), share: false }, hostPort: this.hostPort });
    spec.net.guestPort = overlay.body.vm.appPort;
    stop();
    const signal = this.abort.signal;
    const vm = await startVm(this.opts.lv, spec, this.scope, { signal });
    this.vm = vm;
    // The watchdog: a VM that dies mid-session ends the session now, not at the next offload request.
    const unwatch = vm.qmp.onQemuGone((err) => {
      if (this.closing || this.failedWith) return;
      void explainFailure(err, vm).then((e) => {
        const why = asVmsynthError(e);
        publish('vmDied', { session: this.id, domain: this.domain, error: why });
        this.fail(why);
      });
    });
    this.scope.defer('stop watching the VM', () => unwatch());
    try {
      await loadState(vm.qmp, stateFile, this.session.file('incoming.sock'), { ignoreShared: true, signal });
    } catch (err) {
      throw await explainFailure(err, vm);
    }
    publish('domainRunning', { name: spec.name, ms: this.ms() });
    return this.ms();
  }

  /**
   * Forwards an offload request to the app in the VM. Retries while the
   * app's port refuses connections (the guest's network stack may still be
   * faulting its pages in); a reply of any status is the answer.
   */
  async offload(method: string, path: string, body: Buffer, timeoutMs = 120_000): Promise<HttpReply> {
    if (!this.vm) throw new VmsynthError('VMS_PROTOCOL', 'an offload request came before the VM was ready');
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      if (this.closing || this.failedWith) throw this.failedWith ?? new VmsynthError('VMS_INTERRUPTED', 'the session ended');
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      try {
        const reply = await guestRequest(this.hostPort, method, path, remaining, body.length ? body : undefined);
        if (this.s.firstResponseMs === null) {
          this.s.firstResponseMs = this.ms();
          this.s.bytesBefore = this.s.bytesReceived;
          this.s.segmentsBefore = this.s.segmentsReceived;
          publish('firstResponse', { session: this.id, ms: this.s.firstResponseMs, policy: this.opts.policy });
        }
        return reply;
      } catch (err) {
        last = (err as Error).message;
        if (!(await this.vm.alive())) throw await explainFailure(new VmsynthError('VMS_QEMU_DIED', `the VM stopped while an offload request waited (${last})`), this.vm);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const h = this.heldReads();
    const held = h.reads ? `; ${h.reads} guest read(s) were still waiting for the overlay, the oldest for ${h.oldestMs} ms, on segment(s) ${h.segments.map((x) => `${x.index} (${x.state})`).join(', ')}` : '';
    throw new VmsynthError('VMS_GUEST_TIMEOUT', `the app in the VM did not answer ${method} ${path} within ${timeoutMs} ms (last attempt: ${last})${held}`, { details: { heldReads: h } });
  }

  /** The held guest reads, each segment they wait for with where it is: queued, requested, applying (received, not yet applied) or received. */
  private heldReads(): SynthStats['heldReads'] {
    const h = this.launch.arrivals.held();
    const state = (i: number) => (i < 0 || i >= this.scheduler.total ? 'none' : this.applying.has(i) ? 'applying' : this.scheduler.stateOf(i));
    return { reads: h.reads, oldestMs: h.oldestMs, segments: h.segments.map((index) => ({ index, state: state(index) })) };
  }

  stats(): SynthStats {
    const body = this.opts.overlay.body;
    return {
      policy: this.opts.policy,
      segments: body.segments.length,
      segmentsReceived: this.s.segmentsReceived,
      bytesReceived: this.s.bytesReceived,
      overlayBytes: this.opts.overlay.segmentsBytes,
      demandFetches: this.s.demandFetches,
      outOfOrder: this.scheduler.outOfOrder,
      retries: this.s.retries,
      blockedReads: this.launch.arrivals.stats(),
      heldReads: this.heldReads(),
      resumedMs: this.s.resumedMs,
      firstResponseMs: this.s.firstResponseMs,
      completeMs: this.s.completeMs,
      bytesReceivedBeforeFirstResponse: this.s.bytesBefore,
      segmentsReceivedBeforeFirstResponse: this.s.segmentsBefore,
    };
  }

  /** The launch images as FUSE serves them (tests compare them with an offline apply). */
  get mountpoint(): string {
    return this.session.file('mnt');
  }

  get domain(): string {
    return this.session.domainName;
  }

  /** Destroys the VM, fails held reads, unmounts, stops the workers and removes the files. Idempotent. */
  close(): Promise<SynthStats> {
    this.closing ??= (async () => {
      const stats = this.stats();
      this.abort.abort(new VmsynthError('VMS_INTERRUPTED', 'the session ended'));
      // Held guest reads fail first. A resume in progress may itself be waiting on one
      // (QEMU and libvirtd read the images while the domain starts and loads its state),
      // so it could never reach the step boundary awaited below; and a vCPU blocked in one
      // would keep QEMU from exiting on libvirt's SIGTERM (libvirt then waits 10 s for
      // SIGKILL) while that destroy call holds a thread of libuv's pool.
      this.launch?.arrivals.failAll();
      // Let a resume in progress reach a step boundary, so whatever it acquired is in the scope.
      await this.resuming.catch(() => undefined);
      await this.scope.close();
      return stats;
    })();
    return this.closing;
  }
}
