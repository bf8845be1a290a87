/**
 * The VM of one synthesis session: the launch images mounted over FUSE and
 * the VM restored from the overlay's device state (vm/restore.ts, the one VM
 * restore), watched while it runs, and asked the app's offload requests.
 * SynthSession (session.ts) owns the segments and drives this; what the VM
 * acquires goes into the session's scope, so the session's close tears it
 * down with everything else.
 */
import { setMaxListeners } from 'node:events';
import { DEFAULTS } from '../core/defaults.js';
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import type { Scope } from '../core/scope.js';
import type { Overlay } from '../overlay/reader.js';
import type { Policy } from '../protocol/messages.js';
import type { Base } from '../vm/base.js';
import { askApp, type HttpReply } from '../vm/guest-app.js';
import { qemuPid, type Libvirt } from '../vm/libvirt.js';
import { saveDevices } from '../vm/migration.js';
import { explainFailure, type RunningVm } from '../vm/machine.js';
import {
  adoptRestored,
  prepareRestore,
  type PendingRestore,
  type RestoredVm,
  type RestoreOptions,
} from '../vm/restore.js';
import type { RunDir } from '../vm/run-dir.js';
import type { LaunchImages, MountedImages } from './launch-images.js';
import { describeHeld, type SessionLedger, type SynthStats } from './ledger.js';

export interface LaunchVmOptions {
  id: string;
  policy: Policy;
  lv: Libvirt;
  base: Base;
  overlay: Overlay;
  dir: RunDir;
  launch: LaunchImages;
  scope: Scope;
  fuseDevice?: string;
  ledger: SessionLedger;
  /** Why the session cannot go on (it failed, or is closing), or null. */
  ended(): VmsynthError | null;
  /** The VM failed: the session cannot go on. */
  fail(err: VmsynthError): void;
  /** The VM runs, `ms` into the session. */
  ready(ms: number): void;
  /** The app answered its first offload request. */
  firstResponse(): void;
  /** The guest reads held now, for a timeout's message. */
  heldReads(): SynthStats['heldReads'];
}

export class LaunchVm {
  private vm: RestoredVm | null = null;
  /** Wakes offload requests that came before the VM ran: when it runs, or when the session fails or closes. */
  private readonly changed = new EventTarget();
  /** Aborted by stop(): a resume in progress stops at its next step. */
  private readonly abort = new AbortController();
  private resuming: Promise<unknown> = Promise.resolve();
  private mounting: Promise<MountedImages> | null = null;
  /** A handoff's target: the device state (without RAM) and generation ID the VM goes on with. */
  private handedOff: { deviceState: Uint8Array; genid: string | undefined } | null = null;
  /** A handoff's target: the domain started ahead, waiting for that device state (startAhead). */
  private ahead: { genid: string | undefined; pending: Promise<PendingRestore> } | null = null;

  constructor(private readonly o: LaunchVmOptions) {
    setMaxListeners(0, this.changed); // one listener per offload request waiting (bounded by maxOffloadsInFlight)
  }

  get domain(): string {
    return this.o.dir.domainName;
  }

  /** Mounts the images and restores the VM, in the background; ready() or fail() says how it went. */
  start(): void {
    if (this.o.ended()) return;
    this.resuming = this.resume().then(
      () => {
        const ms = this.o.ledger.resumed();
        publish('sessionResumed', { session: this.o.id, domain: this.domain, ms, policy: this.o.policy });
        if (!this.o.ended()) this.o.ready(ms);
        this.wake();
      },
      (err: unknown) => this.o.fail(asVmsynthError(err)),
    );
  }

  /**
   * Mounts the images and restores the VM a handoff brought: the device state
   * A saved without RAM (its RAM is the images, with the delta), and A's
   * generation ID (the same VM, not a clone).
   */
  startHandedOff(deviceState: Uint8Array, genid: string | undefined): void {
    this.handedOff = { deviceState, genid };
    this.start();
  }

  /**
   * A handoff's target, once it accepted: mounts the images and starts the domain now, waiting
   * for incoming state, with the source's generation ID. The stop then costs only the device
   * state's load. The domain is the session's: it goes with it if the handoff fails.
   */
  startAhead(genid: string | undefined): void {
    if (this.o.ended() || this.ahead || this.vm) return;
    const pending = this.mount().then((images) =>
      prepareRestore(this.o.lv, this.restoreOptions(images, { genid }), this.o.scope),
    );
    pending.catch(() => undefined); // (the resume hears it)
    this.ahead = { genid, pending };
  }

  /** The running VM (its QMP, its qcow2 layer), once it runs. */
  get restored(): RestoredVm | null {
    return this.vm;
  }

  /** A handoff's stop: pauses the VM and returns its device state without RAM (the VM stays, paused). */
  async stopForHandoff(): Promise<Buffer> {
    const vm = this.running();
    return saveDevices(vm.qmp, this.o.dir.file('handoff-devices.state'));
  }

  /** The handoff did not complete before the target resumed: the VM goes on here. */
  async continueAfterHandoff(): Promise<void> {
    await this.running().qmp.execute('cont');
  }

  /** QEMU's process id (for reading its memory from outside: handoff/vm-changes.ts). */
  async qemuPid(): Promise<number> {
    this.running();
    const pid = await qemuPid(this.domain);
    if (pid === null) throw new VmsynthError('VMS_QEMU_DIED', `the VM ${this.domain} has no QEMU process`);
    return pid;
  }

  private running(): RestoredVm {
    if (!this.vm || this.o.ended())
      throw this.o.ended() ?? new VmsynthError('VMS_HANDOFF', `the VM of session ${this.o.id} is not running yet`);
    return this.vm;
  }

  /** The host port forwarded to the app, once the VM runs. */
  get hostPort(): number | null {
    return this.vm?.hostPort ?? null;
  }

  /** Takes over the VM a previous server left running (its images served by an adopted keeper). */
  async adopt(hostPort: number): Promise<void> {
    const images = this.o.launch.mounted();
    this.vm = await adoptRestored(
      this.o.lv,
      {
        base: this.o.base,
        run: this.o.dir,
        memory: images.memory,
        disk: images.disk,
        hostPort,
        appPort: this.o.overlay.body.vm.appPort,
      },
      this.o.scope,
    );
    // Paused, it was stopped by a handoff whose server died before the target took it over:
    // the VM goes on here (its target's copy, which no client was sent to, ends there).
    const { status } = await this.vm.qmp.execute<{ status: string }>('query-status');
    if (status === 'paused') await this.vm.qmp.execute('cont');
    this.watch(this.vm);
    this.wake();
  }

  /** Offload requests waiting for the VM look again (the session failed or ended). */
  wake(): void {
    this.changed.dispatchEvent(new Event('change'));
  }

  /** The session closes: a resume in progress stops at its next step; waiting requests end. */
  abortResume(): void {
    this.abort.abort(new VmsynthError('VMS_INTERRUPTED', 'the session ended'));
    queueMicrotask(() => this.wake()); // (once the session says it is closing)
  }

  /** Resolves when a resume in progress reached a step boundary (whatever it acquired is in the scope). */
  async settled(): Promise<void> {
    await this.resuming.catch(() => undefined);
    await this.mounting?.catch(() => undefined);
    await this.ahead?.pending.catch(() => undefined);
  }

  /**
   * Mounts the images now, ahead of the resume (a handoff's target: the mount, and its keeper's
   * start, then stay out of the time the VM is stopped).
   */
  mountEarly(): void {
    if (this.o.ended()) return;
    this.mount().catch(() => undefined); // (the resume hears it)
  }

  /** The images mounted, once (early, or by the resume). */
  private mount(): Promise<MountedImages> {
    return (this.mounting ??= this.o.launch.mount(
      this.o.dir.file('mnt'),
      { fuseDevice: this.o.fuseDevice },
      this.o.scope,
    ));
  }

  /** How the VM restores; `handoff`: a handoff's target (the devices without RAM, and the source's generation ID). */
  private restoreOptions(
    images: MountedImages,
    handoff: { genid: string | undefined } | null,
  ): Omit<RestoreOptions, 'deviceState'> {
    const { base, overlay, dir } = this.o;
    return {
      base,
      run: dir,
      memory: { path: images.memory, share: false },
      disk: { path: images.disk },
      ...(handoff ? { devicesOnly: true, genid: handoff.genid } : {}),
      appPort: overlay.body.vm.appPort,
      signal: this.abort.signal,
      onStarted: (vm) => this.watch(vm),
    };
  }

  private async resume(): Promise<void> {
    const handed = this.handedOff;
    if (this.ahead && handed && this.ahead.genid !== handed.genid)
      throw new VmsynthError('VMS_HANDOFF', "the source's last pass names another VM generation than its offer", {
        details: { step: 'target' },
      });
    // (Only a handoff's target starts ahead, and it resumes with the device state handed over.)
    const pending =
      this.ahead?.pending ??
      prepareRestore(
        this.o.lv,
        this.restoreOptions(await this.mount(), handed ? { genid: handed.genid } : null),
        this.o.scope,
      );
    this.vm = await (await pending).load(handed?.deviceState ?? this.o.overlay.deviceState());
    publish('domainRunning', { name: this.domain, ms: this.o.ledger.ms(), genid: this.vm.spec.genid ?? null });
  }

  /** The watchdog: a VM that dies mid-session ends the session now, not at the next offload request. */
  private watch(vm: RunningVm): void {
    const unwatch = vm.qmp.onQemuGone((err) => {
      if (this.o.ended()) return;
      void explainFailure(err, vm).then((e) => {
        const why = asVmsynthError(e);
        publish('vmDied', { session: this.o.id, domain: this.domain, error: why });
        this.o.fail(why);
      });
    });
    this.o.scope.defer('stop watching the VM', () => unwatch());
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
    while (!this.vm && !this.o.ended())
      await new Promise<void>((resolve) => this.changed.addEventListener('change', () => resolve(), { once: true }));
    const vm = this.vm;
    if (!vm) throw this.o.ended() ?? new VmsynthError('VMS_INTERRUPTED', 'the session ended');
    const r = await askApp(
      vm.hostPort,
      { method, path, body },
      Date.now() + timeoutMs,
      () => this.o.ended(),
      () => vm.alive(),
    );
    if (r.reply) {
      const first = this.o.ledger.replied();
      if (first !== null) {
        publish('firstResponse', { session: this.o.id, ms: first, policy: this.o.policy });
        this.o.firstResponse();
      }
      return r.reply;
    }
    const last = r.last;
    if (r.dead)
      throw await explainFailure(
        new VmsynthError('VMS_QEMU_DIED', `the VM stopped while an offload request waited (${last})`),
        vm,
      );
    const h = this.o.heldReads();
    throw new VmsynthError(
      'VMS_GUEST_TIMEOUT',
      `the app in the VM did not answer ${method} ${path} within ${timeoutMs} ms (last attempt: ${last})${describeHeld(h)}`,
      { details: { heldReads: h } },
    );
  }
}
