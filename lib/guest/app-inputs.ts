/**
 * The first request of each real offload app (guest/apps/offload-server.py), made on the host from
 * Debian tools and data, byte-identical on every run so its answer can be compared across resumes:
 *
 *   speech   a WAV (16 kHz, mono, 16-bit) of SPEECH_TEXT spoken by espeak-ng, resampled by sox
 *   ocr      a PNG of OCR_TEXT drawn by ImageMagick in DejaVu Sans
 *   face     scikit-image's astronaut.png, taken from Debian's python3-skimage .deb (not installed)
 *   compute  a JSON body for the stable-fluids solver
 */
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { exec } from '../core/exec.js';
import { VmsynthError } from '../core/errors.js';
import { cacheDir } from '../core/paths.js';

export type AppName = 'speech' | 'ocr' | 'face' | 'compute';

export const APP_NAMES: readonly AppName[] = ['speech', 'ocr', 'face', 'compute'];

export interface AppInput {
  file: string;
  contentType: string;
  description: string;
}

/** Debian packages the host needs to make the inputs (apt-get, dpkg-deb and tar are always there). */
export const HOST_PACKAGES = ['espeak-ng', 'sox', 'imagemagick', 'fonts-dejavu-core'] as const;

/** pocketsphinx (en-us model) hears this espeak-ng sentence word for word. */
export const SPEECH_TEXT = 'I would like to book a flight to new york';

/** tesseract reads this back exactly, line breaks included. */
export const OCR_TEXT = [
  'Virtual machine synthesis brings the cloud',
  'closer to mobile devices. A small overlay,',
  'applied to a base image, rebuilds the VM',
  'that runs the offloaded application.',
].join('\n');

/** The solver's work for one request: ~0.1 s natively. */
export const COMPUTE_SPEC = { grid: 32, steps: 8 };

const CODE = 'VMS_GUEST_BUILD' as const;
const CONVERT = '/usr/bin/convert'; // Debian's ImageMagick, not a stand-in earlier on PATH
const FONT = '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf';
const SKIMAGE = 'python3-skimage';
const ASTRONAUT = './usr/lib/python3/dist-packages/skimage/data/astronaut.png';

export async function makeAppInput(app: AppName, dir: string): Promise<AppInput> {
  await mkdir(dir, { recursive: true });
  switch (app) {
    case 'speech':
      return speech(dir);
    case 'ocr':
      return ocr(dir);
    case 'face':
      return face(dir);
    case 'compute': {
      const file = path.join(dir, 'compute.json');
      await writeFile(file, JSON.stringify(COMPUTE_SPEC) + '\n');
      return { file, contentType: 'application/json', description: `stable fluids, ${COMPUTE_SPEC.grid}x${COMPUTE_SPEC.grid} grid, ${COMPUTE_SPEC.steps} steps` };
    }
  }
}

async function speech(dir: string): Promise<AppInput> {
  const raw = path.join(dir, 'speech-espeak.wav');
  const file = path.join(dir, 'speech.wav');
  // en-us at 160 words/min is what pocketsphinx hears best. sox's dither (seeded by -R, so repeatable)
  // keeps espeak's digital silence from zeroing the signal energy, and the padding gives pocketsphinx
  // silence around the utterance: without either it hears other words.
  await exec('espeak-ng', ['-v', 'en-us', '-s', '160', '-w', raw, SPEECH_TEXT], { code: CODE });
  await exec('sox', ['-R', raw, '-r', '16000', '-c', '1', '-b', '16', '-e', 'signed-integer', file, 'pad', '0.3', '0.3'], { code: CODE });
  await rm(raw, { force: true });
  return { file, contentType: 'audio/wav', description: `espeak-ng saying "${SPEECH_TEXT}" (16 kHz mono WAV)` };
}

async function ocr(dir: string): Promise<AppInput> {
  if (!existsSync(CONVERT)) throw new VmsynthError(CODE, `${CONVERT} is missing: install ImageMagick (apt-get install ${HOST_PACKAGES.join(' ')})`);
  if (!existsSync(FONT)) throw new VmsynthError(CODE, `${FONT} is missing: apt-get install fonts-dejavu-core`);
  const file = path.join(dir, 'ocr.png');
  await exec(CONVERT, [
    '-background', 'white', '-fill', 'black', '-font', FONT, '-pointsize', '32', '-interline-spacing', '8',
    `label:${OCR_TEXT}`, '-bordercolor', 'white', '-border', '40',
    // no timestamps or metadata, so the bytes are the same on every run
    '-strip', '-colorspace', 'Gray', '-depth', '8', '-define', 'png:exclude-chunks=date,time,tIME', '+set', 'date:create', '+set', 'date:modify',
    `png:${file}`,
  ], { code: CODE });
  return { file, contentType: 'image/png', description: `${OCR_TEXT.split('\n').length} lines of English text (PNG)` };
}

async function face(dir: string): Promise<AppInput> {
  const debs = path.join(cacheDir(), 'debs');
  await mkdir(debs, { recursive: true });
  let deb = await findDeb(debs);
  if (!deb) {
    await exec('apt-get', ['download', '-o', 'APT::Sandbox::User=root', SKIMAGE], { cwd: debs, code: CODE });
    deb = await findDeb(debs);
    if (!deb) throw new VmsynthError(CODE, `apt-get download ${SKIMAGE} left no .deb in ${debs}`);
  }
  const png = path.join(dir, 'face-astronaut.png');
  await exec('bash', ['-c', 'set -o pipefail; dpkg-deb --fsys-tarfile "$1" | tar -xOf - "$2" > "$3"', 'extract', deb, ASTRONAUT, png], { code: CODE });
  // Drop the colour profile: its sRGB profile makes libpng warn on the guest's stderr at every decode.
  const file = path.join(dir, 'face.png');
  await writeFile(file, dropPngChunks(await readFile(png), new Set(['iCCP'])));
  await rm(png, { force: true });
  return { file, contentType: 'image/png', description: `astronaut.png (512x512, one face) from ${path.basename(deb)}` };
}

async function findDeb(dir: string): Promise<string | undefined> {
  const names = (await readdir(dir)).filter((n) => n.startsWith(`${SKIMAGE}_`) && n.endsWith('.deb')).sort();
  const last = names.at(-1);
  return last === undefined ? undefined : path.join(dir, last);
}

/** The PNG without the named ancillary chunks; the pixels are untouched. */
function dropPngChunks(png: Buffer, drop: Set<string>): Buffer {
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  if (png.length < 8 || !png.subarray(0, 8).equals(signature)) throw new VmsynthError(CODE, 'astronaut.png is not a PNG');
  const parts: Buffer[] = [signature];
  for (let at = 8; at < png.length; ) {
    if (at + 12 > png.length) throw new VmsynthError(CODE, 'astronaut.png is cut short');
    const end = at + 12 + png.readUInt32BE(at);
    if (end > png.length) throw new VmsynthError(CODE, 'astronaut.png is cut short');
    if (!drop.has(png.toString('latin1', at + 4, at + 8))) parts.push(png.subarray(at, end));
    at = end;
  }
  return Buffer.concat(parts);
}
