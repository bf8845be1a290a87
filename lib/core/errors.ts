/**
 * The one error type of vmsynth, and the catalogue of its stable codes.
 *
 * Every failure that reaches a user (CLI, logs, and the wire protocol's error
 * messages) is a VmsynthError whose `code` never changes meaning. Each
 * catalogue entry says what went wrong in general and what to do about it;
 * the thrower adds the specifics, and machine-readable `details` where one
 * code covers cases a caller tells apart. Tests assert `err.code` and
 * `err.details`, never message text.
 */

export interface ErrorSpec {
  /** Process exit status the CLI uses for this error. */
  readonly exit: number;
  /** What the user should do about it. */
  readonly hint: string;
}

export const ERRORS = {
  VMS_USAGE: { exit: 64, hint: 'Check the command line; run the command with --help.' },
  VMS_BASE_NOT_FOUND: {
    exit: 66,
    hint: 'List bases with `vmsynth base list`, or create one with `vmsynth base create`.',
  },
  VMS_BASE_EXISTS: { exit: 73, hint: 'Pick another name, or pass --force to replace the existing base.' },
  VMS_BASE_FILE_MISSING: {
    exit: 66,
    hint: 'The base directory is incomplete; recreate it with `vmsynth base create --force`.',
  },
  VMS_BASE_CORRUPT: {
    exit: 65,
    hint: 'The base manifest or a base file is damaged; recreate it with `vmsynth base create --force`.',
  },
  VMS_BASE_OUTDATED: {
    exit: 65,
    hint: 'The base was captured by an older vmsynth with another VM device set; capture it again with `vmsynth base create NAME --force` (overlays made against it must be made again too).',
  },
  VMS_HASH_MISMATCH: {
    exit: 65,
    hint: 'A base file changed since capture; recreate the base, or restore the file from a good copy.',
  },
  VMS_MEMORY_SIZE_MISMATCH: {
    exit: 65,
    hint: 'The memory image does not match the size the base was captured with; recreate the base.',
  },
  VMS_ACCEL_MISMATCH: {
    exit: 69,
    hint: 'A base resumes only under the accelerator and CPU model it was captured with; capture it on this host.',
  },
  VMS_NO_FUSE: {
    exit: 69,
    hint: 'Load the fuse module (`modprobe fuse`) and give the process /dev/fuse; in a container pass --device /dev/fuse.',
  },
  VMS_NATIVE: {
    exit: 69,
    hint: 'A native addon of vmsynth (native/, e.g. the systemd notifier) is not built for this install; run `npm run bootstrap` (needs gcc, make, python3 and the Node headers).',
  },
  VMS_FUSE_MOUNT: {
    exit: 71,
    hint: 'Check that the mount point is free (`grep fuse /proc/mounts`) and that libfuse2 and fuse3 are installed.',
  },
  VMS_LIBVIRT_UNREACHABLE: {
    exit: 69,
    hint: 'Start libvirtd and virtlogd (`libvirtd -d; virtlogd -d`, or `systemctl start libvirtd`), or set LIBVIRT_URI.',
  },
  VMS_LIBVIRT: {
    exit: 71,
    hint: 'libvirt refused the operation; see its message, and `virsh list --all` for the domain state.',
  },
  VMS_QEMU_DIED: {
    exit: 70,
    hint: 'QEMU exited unexpectedly; see the guest console log and /var/log/libvirt/qemu/ for the reason.',
  },
  VMS_QMP: { exit: 70, hint: 'QEMU rejected a monitor command; see the message, which names it.' },
  VMS_MIGRATION: {
    exit: 70,
    hint: 'Saving or loading the device state failed; the base may be from another QEMU version: recreate it.',
  },
  VMS_VM_MEMORY: {
    exit: 71,
    hint: "Reading a running VM's memory from /proc failed; run vmsynth as root (with CAP_SYS_PTRACE where Yama is on), and check that the VM still runs.",
  },
  VMS_GUEST_TIMEOUT: {
    exit: 75,
    hint: 'The guest app never answered; see the console log tail in the message, or raise --timeout (TCG is slow).',
  },
  VMS_GUEST_BUILD: {
    exit: 70,
    hint: 'Building the test guest failed; check that apt can download the Debian kernel (`apt-get update`).',
  },
  VMS_OVERLAY_CORRUPT: {
    exit: 65,
    hint: 'The overlay is truncated or damaged; fetch or build it again (`vmsynth overlay verify DIR` names the first bad part).',
  },
  VMS_OVERLAY_FORMAT: {
    exit: 65,
    hint: 'The overlay was written in a format version this vmsynth does not read; rebuild it with this version, or upgrade vmsynth.',
  },
  VMS_OVERLAY_EXISTS: {
    exit: 73,
    hint: 'The output directory already exists; pick another, or pass --force to replace it.',
  },
  VMS_BASE_MISMATCH: {
    exit: 65,
    hint: 'The overlay was made against another base; synthesize it over the base whose disk and memory hashes it names (`vmsynth overlay inspect DIR`).',
  },
  VMS_BAD_SIGNATURE: {
    exit: 65,
    hint: 'The overlay manifest is not signed by the key it names; it was altered after signing. Do not use it.',
  },
  VMS_UNTRUSTED_KEY: {
    exit: 77,
    hint: 'The overlay is signed by a key this host does not trust; add its public key with `vmsynth key trust FILE`, or pass --trust FILE.',
  },
  VMS_NO_KEY: { exit: 66, hint: 'Create a signing key with `vmsynth key generate`, or pass --key FILE.' },
  VMS_CUSTOMIZE_FAILED: {
    exit: 70,
    hint: 'The customization script failed inside the guest; its output is in the message. Fix the script and run `vmsynth overlay create` again.',
  },
  VMS_PROTOCOL: {
    exit: 76,
    hint: 'The peer sent something the vmsynth protocol does not allow (see docs/protocol.md); check that client and server speak the same protocol version.',
  },
  VMS_FRAME_TOO_LARGE: {
    exit: 76,
    hint: 'A frame was larger than the protocol allows for its type; the peer is broken or hostile. Segments must stay under 64 MiB.',
  },
  VMS_AUTH: {
    exit: 77,
    hint: 'The server requires a client token: pass --token (or VMSYNTH_TOKEN) with a token the server lists for this client (`vmsynth token generate NAME` makes one).',
  },
  VMS_CONNECT: {
    exit: 69,
    hint: 'Cannot reach the synthesis server: check HOST:PORT, and that `vmsynth serve` runs there and its port is open.',
  },
  VMS_PEER_GONE: {
    exit: 69,
    hint: 'The other side left mid-session: a client that gave up or stayed away past the grace period, or a server that could not be reached again within it (it stopped, crashed or lost its network). Retry; if it repeats, see the server log.',
  },
  VMS_SESSION_GONE: {
    exit: 69,
    hint: 'The session to resume has ended (finished, failed, or its grace period passed) or the server does not know it (it restarted); start a new session.',
  },
  VMS_SESSION_MOVED: {
    exit: 75,
    hint: 'The session was handed off to another cloudlet (details.to, details.session); resume it there. The client library does this by itself.',
  },
  VMS_HANDOFF: {
    exit: 75,
    hint: 'The handoff failed at the step the message names; unless it says otherwise the VM goes on where it was. Retry, or hand off to another cloudlet.',
  },
  VMS_HANDOFF_REFUSED: {
    exit: 69,
    hint: "The target cloudlet refused the handoff (details.targetCode says why: it lacks the base, VMS_BASE_NOT_FOUND; runs its limit of sessions, VMS_BUSY; wants a token this cloudlet does not present (handoffToken), VMS_AUTH; does not trust the overlay's key, VMS_UNTRUSTED_KEY); the VM goes on here. Pick another cloudlet (`vmsynth discover`), or give the target what it lacks.",
  },
  VMS_BUSY: {
    exit: 75,
    hint: 'The server runs as many sessions as it is allowed; retry shortly, or raise its --max-sessions.',
  },
  VMS_SHUTTING_DOWN: {
    exit: 75,
    hint: 'The server is stopping (SIGTERM or SIGINT); retry when it is back, or against another cloudlet.',
  },
  VMS_CONFIG: {
    exit: 78,
    hint: 'Fix the named key in the config file (/etc/vmsynth/vmsynth.json), the VMSYNTH_* variable or the flag; `vmsynth config check` shows the effective config and where each value comes from.',
  },
  VMS_LIMIT: {
    exit: 75,
    hint: 'The request exceeds a limit of this server (sessions per client, memory per session); retry later, use a smaller VM, or raise the limit in its config.',
  },
  VMS_RATE_LIMITED: {
    exit: 75,
    hint: 'Too many connections from this address in the last minute; wait a minute, or raise connectionsPerMinute in the server config.',
  },
  VMS_STORE: {
    exit: 74,
    hint: 'The cloudlet store (storeDir) cannot be used: check that the directory is writable and not full. It is a cache: moving it aside loses nothing but warm starts.',
  },
  VMS_STORE_NOT_FOUND: {
    exit: 66,
    hint: 'No overlay in the store matches; `vmsynth store ls` lists them (an id prefix of 8 or more hex digits is enough).',
  },
  VMS_OBJECT_STORE: {
    exit: 69,
    hint: 'The object store did not serve the request: check the s3:// URL, the endpoint (s3Endpoint), the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / ~/.aws) and that the bucket allows this; details.reason says which failed (not-found, denied, timeout, unreachable).',
  },
  VMS_SERVICE: {
    exit: 69,
    hint: '`vmsynth service install` could not install or start the service: run it as root; with --now, `systemctl status vmsynth` and `journalctl -u vmsynth` say why the service did not start.',
  },
  VMS_INTERRUPTED: { exit: 130, hint: 'Interrupted by a signal; everything the command had started was cleaned up.' },
  VMS_INTERNAL: { exit: 70, hint: 'This is a bug in vmsynth; please report it with the log.' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export interface ErrorOptions {
  cause?: unknown;
  /** Extra machine-readable facts (paths, sizes, hashes). */
  details?: Record<string, unknown>;
}

export class VmsynthError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'VmsynthError';
    this.code = code;
    this.hint = ERRORS[code].hint;
    this.details = options.details ?? {};
  }

  get exitCode(): number {
    return ERRORS[this.code].exit;
  }

  toJSON(): Record<string, unknown> {
    return {
      code: this.code,
      message: this.message,
      hint: this.hint,
      ...(Object.keys(this.details).length ? { details: this.details } : {}),
    };
  }
}

/** Wraps anything thrown into a VmsynthError, keeping one that already is. */
export function asVmsynthError(err: unknown, fallback: ErrorCode = 'VMS_INTERNAL'): VmsynthError {
  if (err instanceof VmsynthError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new VmsynthError(fallback, message, { cause: err });
}

export function isErrorCode(err: unknown, code: ErrorCode): boolean {
  return err instanceof VmsynthError && err.code === code;
}
