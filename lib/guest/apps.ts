/**
 * The real offload apps of the Debian base: their Debian packages, the
 * request server (guest/apps/offload-server.py) and the guest script that
 * installs one from a local apt repository, starts it in place of the base's
 * placeholder app and warms it with one real request. The same script serves
 * the overlay's customization and the benchmark's remote install.
 */
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import { packageRoot } from '../core/paths.js';
import type { AppName } from './app-inputs.js';

export { APP_NAMES } from './app-inputs.js';

export interface AppSpec {
  name: AppName;
  /** What it does, for tables. */
  title: string;
  /** The app of Elijah's table it stands for. */
  elijah: 'OBJECT' | 'FACE' | 'SPEECH' | 'AR' | 'FLUID';
  /** Debian packages, installed with --no-install-recommends. */
  packages: string[];
  /** Why this differs from the app Elijah measured. */
  note: string;
}

export const APPS: Record<AppName, AppSpec> = {
  speech: {
    name: 'speech', title: 'speech recognition (pocketsphinx, en-us)', elijah: 'SPEECH',
    packages: ['python3-pocketsphinx', 'pocketsphinx-en-us'],
    note: 'CMU Sphinx, as in Elijah; the model stays loaded in the server',
  },
  ocr: {
    name: 'ocr', title: 'OCR (tesseract, English)', elijah: 'OBJECT',
    packages: ['tesseract-ocr', 'tesseract-ocr-eng', 'python3-tesserocr'],
    note: 'stands in for OBJECT (MOPED object recognition is not in Debian)',
  },
  face: {
    name: 'face', title: 'face detection (OpenCV Haar cascade)', elijah: 'FACE',
    packages: ['python3-opencv', 'opencv-data'],
    note: "Debian's python3-opencv pulls in about 300 packages with --no-install-recommends (VTK, GDAL, Qt, ffmpeg...)",
  },
  compute: {
    name: 'compute', title: 'fluid simulation (pure python, stable fluids)', elijah: 'FLUID',
    packages: [],
    note: 'FLUID-sized: nothing to install beyond the base; the server and its state are the overlay',
  },
};

/** Where the server and the warm-up input go in the guest. */
export const GUEST_SERVER = '/usr/local/sbin/offload-server.py';
export const GUEST_INPUT = '/tmp/vmsynth-warmup.input';

export function serverSource(): string {
  return path.join(packageRoot(), 'guest', 'apps', 'offload-server.py');
}

export function appRequestPath(): string {
  return '/run';
}

/**
 * The guest script (/bin/sh): install the packages from `repoUrl` (a flat
 * repository, `deb [trusted=yes] URL ./`), drop apt's downloads and lists,
 * trim the freed blocks, make the server the guest's app, stop the
 * placeholder, and wait for one answer to the warm-up input. Expects
 * GUEST_SERVER and GUEST_INPUT in place.
 */
export function installScript(app: AppSpec, repoUrl: string | null, opts: { trim?: boolean } = {}): string {
  const lines = ['set -e', 'export DEBIAN_FRONTEND=noninteractive'];
  if (app.packages.length > 0) {
    // A caller's bug (every caller passes one for an app with packages): VMS_INTERNAL, as a plain Error would become.
    if (!repoUrl) throw new VmsynthError('VMS_INTERNAL', `app ${app.name} needs a repository`, { details: { app: app.name, reason: 'no-repository' } });
    lines.push(
      `echo 'deb [trusted=yes] ${repoUrl} ./' > /etc/apt/sources.list.d/vmsynth-app.list`,
      // A resumed VM's clock is its snapshot's until the base's clock keeper (offload-app --clock) sets it from
      // the RTC, within a second of the resume: apt does not judge the Release date, so an install never races that.
      'apt-get -q -o Acquire::Languages=none -o Acquire::Check-Date=false -o Acquire::Check-Valid-Until=false update',
      `apt-get -q -y --no-install-recommends install ${app.packages.join(' ')}`,
      'rm -f /etc/apt/sources.list.d/vmsynth-app.list',
      'apt-get clean',
      'rm -rf /var/lib/apt/lists/*',
    );
  }
  lines.push(
    `printf '#!/bin/sh\\nexec python3 ${GUEST_SERVER} ${app.name} --port 8000\\n' > /etc/vmsynth/app`,
    'chmod 755 /etc/vmsynth/app',
    // The placeholder app ends; the init's loop starts /etc/vmsynth/app in its place.
    'kill "$(cat /run/vmsynth-app.pid)"',
    `python3 - <<'PY'
import time, urllib.request
body = open('${GUEST_INPUT}', 'rb').read()
deadline = time.time() + 600
while True:
    try:
        req = urllib.request.Request('http://127.0.0.1:8000${appRequestPath()}', data=body, method='POST')
        with urllib.request.urlopen(req, timeout=300) as r:
            print('warm-up answer:', r.read()[:300].decode())
        break
    except Exception as e:
        if time.time() > deadline:
            raise SystemExit('the app never answered its warm-up request: %s' % e)
        time.sleep(0.5)
PY`,
    `rm -f ${GUEST_INPUT}`,
  );
  if (opts.trim ?? true) lines.push('sync', 'fstrim -v / || true');
  return lines.join('\n') + '\n';
}
