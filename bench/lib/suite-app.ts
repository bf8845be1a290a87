/**
 * The suite's apps, built: each app's overlay over the Debian base
 * (customized from a local apt repository of its .debs), its sizes against
 * the naive diff and Elijah's scheme, and its access-order profiled copy,
 * cached under the cache directory by everything they are made from. Used by
 * the suite bench and the handoff bench.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { cacheDir } from '../../lib/core/paths.js';
import { makeAppInput, type AppName } from '../../lib/guest/app-inputs.js';
import {
  APPS,
  appRequestPath,
  GUEST_INPUT,
  GUEST_SERVER,
  installScript,
  serverSource,
  type AppSpec,
} from '../../lib/guest/apps.js';
import { buildAptRepo, serveDirectory, type AptRepo } from '../../lib/guest/apt-repo.js';
import { buildDebianGuest, debianBaseSource, type DebianGuest } from '../../lib/guest/debian.js';
import { ChunkKind } from '../../lib/overlay/format.js';
import { readRecord } from '../../lib/overlay/records.js';
import { createOverlay } from '../../lib/offline/create.js';
import { profileOverlay } from '../../lib/offline/profile.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { ensureBase, type Base } from '../../lib/vm/base.js';
import type { AppRequest } from '../../lib/vm/guest-app.js';
import { elijahSize } from '../elijah.js';
import { markEntry, pruneAppEntries } from './app-cache.js';
import { benchKey, openIfValid, trustedBy, type BenchKey } from './bench-key.js';
import type { AppResult } from './suite-report.js';

/** The Debian base's name. */
export const BASE_NAME = 'debian';

/** The suite's Debian guest and base (built, or found in the cache), and the key that signs its apps' overlays. */
export async function suiteBase(signal: AbortSignal): Promise<{ guest: DebianGuest; base: Base; key: BenchKey }> {
  const guest = await buildDebianGuest();
  const { base } = await ensureBase(BASE_NAME, debianBaseSource(guest), signal);
  const key = await benchKey(path.join(cacheDir(), 'bench', 'suite'));
  return { guest, base, key };
}

/** A customization may take this long (face: about 13 minutes under TCG). */
export const INSTALL_TIMEOUT_MS = 3 * 3600_000;

export interface PreparedApp {
  spec: AppSpec;
  repo: AptRepo;
  input: { file: string; description: string; bytes: number };
  request: AppRequest;
  plain: Overlay;
  profiled: Overlay;
  sizes: AppResult['sizes'];
  prep: AppResult['prep'];
}

const progress = (msg: string) => process.stderr.write(`suite: ${msg}\n`);

async function fileSha(file: string): Promise<string> {
  return createHash('sha256')
    .update(await fsp.readFile(file))
    .digest('hex');
}

/** Overlay bytes split by image: a segment's compressed bytes shared out by its records' payload (XOR/RAW) per image. */
function splitByImage(ov: Overlay): { memory: number; disk: number } {
  const out = { memory: 0, disk: 0 };
  for (const s of ov.body.segments) {
    const payload = [0, 0];
    for (let i = 0; i < s.count; i++) {
      const r = readRecord(s.chunks, i);
      if (r.kind === ChunkKind.XOR || r.kind === ChunkKind.RAW) payload[r.image]! += 1;
    }
    const total = payload[0]! + payload[1]!;
    const memShare = total === 0 ? 0.5 : payload[0]! / total;
    out.memory += s.bytes * memShare;
    out.disk += s.bytes * (1 - memShare);
  }
  return { memory: Math.round(out.memory), disk: Math.round(out.disk) };
}

export async function prepareApp(
  name: AppName,
  guest: DebianGuest,
  base: Base,
  key: BenchKey,
  quick: boolean,
  signal: AbortSignal,
): Promise<PreparedApp> {
  const spec = APPS[name];
  const root = path.join(cacheDir(), 'bench', 'suite');
  const repo = await buildAptRepo(guest, spec.packages);
  const inputDir = path.join(root, 'inputs', name);
  await fsp.mkdir(inputDir, { recursive: true });
  const input = await makeAppInput(name, inputDir);
  const body = await fsp.readFile(input.file);
  const request: AppRequest = { method: 'POST', path: appRequestPath(), body };
  const scriptTemplate = installScript(spec, spec.packages.length ? 'http://REPO' : null);
  const m = base.manifest;
  const id = createHash('sha256')
    .update(
      JSON.stringify({
        base: [m.memory.sha256, m.disk.sha256, m.deviceState.sha256],
        scriptTemplate,
        server: await fileSha(serverSource()),
        input: createHash('sha256').update(body).digest('hex'),
        key: key.keyId,
        debs: repo.debs,
      }),
    )
    .digest('hex')
    .slice(0, 16);
  const dir = path.join(root, `${name}-${id}`);
  const made = { baseDir: base.dir, memorySha256: m.memory.sha256 };
  await markEntry(dir, made);
  await pruneAppEntries(root, name, `${name}-${id}`, made);
  const plainDir = path.join(dir, 'overlay');
  const profileRuns = quick ? 1 : 3;
  const profiledDir = path.join(dir, `profiled-${profileRuns}`);
  const sizesFile = path.join(dir, 'sizes.json');
  let plain = await openIfValid(plainDir, key);
  let sizes = JSON.parse(await fsp.readFile(sizesFile, 'utf8').catch(() => 'null')) as AppResult['sizes'] | null;
  const prep: AppResult['prep'] = {
    cached: plain !== null && sizes !== null,
    createMs: null,
    customizeMs: null,
    profileMs: null,
    elijahMs: null,
  };
  if (!plain || !sizes) {
    await fsp.mkdir(dir, { recursive: true });
    const custom = path.join(dir, 'custom');
    // A run stopped after the customization kept the custom VM: measure that one rather than install again.
    const kept =
      plain !== null &&
      (
        await Promise.all(
          ['memory.raw', 'disk.raw'].map((f) =>
            fsp.stat(path.join(custom, f)).then(
              () => true,
              () => false,
            ),
          ),
        )
      ).every(Boolean);
    if (!kept) {
      await fsp.rm(custom, { recursive: true, force: true });
      const repoServer = await serveDirectory(repo.dir, '127.0.0.1');
      try {
        progress(
          `${name}: customizing base "${base.name}" (installing ${spec.packages.length ? spec.packages.join(' ') : 'nothing'}; under TCG this can take many minutes)`,
        );
        const t0 = performance.now();
        // QEMU's user network shows the host's loopback to the guest as 10.0.2.2.
        const r = await createOverlay({
          base: base.name,
          out: plainDir,
          force: true,
          key: key.file,
          keepCustom: custom,
          timeoutMs: INSTALL_TIMEOUT_MS,
          signal,
          script: installScript(spec, spec.packages.length ? `http://10.0.2.2:${repoServer.port}` : null),
          copies: [
            { src: serverSource(), dest: GUEST_SERVER, mode: 0o755 },
            { src: input.file, dest: GUEST_INPUT, mode: 0o644 },
          ],
        });
        prep.createMs = Math.round(performance.now() - t0);
        prep.customizeMs = r.custom.ms.total;
      } finally {
        await repoServer.close();
      }
    }
    plain ??= await Overlay.open(plainDir, { trusted: trustedBy(key) });
    progress(`${name}: Elijah's scheme (xdelta3 + xz) on the same chunks`);
    const e = elijahSize(
      plain,
      { memory: base.file('memory'), disk: base.file('disk') },
      { memory: path.join(custom, 'memory.raw'), disk: path.join(custom, 'disk.raw') },
    );
    prep.elijahMs = Math.round(e.ms);
    await fsp.rm(custom, { recursive: true, force: true });
    const st = plain.body.stats;
    sizes = {
      overlay: {
        total: plain.segmentsBytes + plain.manifestBytes,
        segments: plain.segmentsBytes,
        manifest: plain.manifestBytes,
        ...splitByImage(plain),
      },
      naive: {
        total: (st.modified.memory + st.modified.disk) * plain.body.chunkSize,
        memory: st.modified.memory * plain.body.chunkSize,
        disk: st.modified.disk * plain.body.chunkSize,
      },
      elijah: { total: e.bytes, xdeltaItems: e.xdeltaItems, rawItems: e.rawItems },
      repo: { debs: repo.debs.length, bytes: repo.bytes, installedBytes: repo.installedBytes },
      ratioVsNaive: 0,
      ratioVsElijah: 0,
    };
    sizes.ratioVsNaive = +(sizes.overlay.total / sizes.naive.total).toFixed(4);
    sizes.ratioVsElijah = +(sizes.overlay.total / sizes.elijah.total).toFixed(4);
    await fsp.writeFile(sizesFile, JSON.stringify(sizes, null, 2) + '\n');
    for (const d of await fsp.readdir(dir))
      if (d.startsWith('profiled')) await fsp.rm(path.join(dir, d), { recursive: true, force: true });
  }
  let profiled = await openIfValid(profiledDir, key, { tables: true });
  if (!profiled) {
    progress(`${name}: profiling the first request's access order (${profileRuns} runs)`);
    const t0 = performance.now();
    await profileOverlay({
      overlay: plainDir,
      out: profiledDir,
      runs: profileRuns,
      request,
      key: key.file,
      trust: [key.pubFile],
      force: true,
      timeoutMs: 600_000,
      signal,
    });
    prep.profileMs = Math.round(performance.now() - t0);
    profiled = await Overlay.open(profiledDir, { trusted: trustedBy(key) });
  }
  return {
    spec,
    repo,
    input: { file: input.file, description: input.description, bytes: body.length },
    request,
    plain,
    profiled,
    sizes,
    prep,
  };
}
