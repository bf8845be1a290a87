/**
 * Test isolation: each test file gets its own run, base and key directories, so
 * parallel test files never see each other's sessions or bases. Import this
 * first in any test that touches lib/ paths.
 *
 * A root is named after its test process (vmsynth-test-<pid>-XXXXXX). A test
 * process killed before its teardown leaves its root behind; the next test
 * process to start removes the roots of processes that are gone, unless
 * something is still mounted in them.
 */
import { mkdtempSync, promises as fsp, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { processAlive } from '../../lib/core/stale.js';
import { mountsUnder } from '../../lib/fs/mounts.js';

const PREFIX = 'vmsynth-test-';

/** Roots under `dir` left by test processes that are gone and hold no mount; returns what it removed. */
export async function sweepStaleTestRoots(dir = os.tmpdir()): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await fsp.readdir(dir)) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    const root = path.join(dir, name);
    if ((await mountsUnder(root)).length > 0) continue;
    try {
      await fsp.rm(root, { recursive: true, force: true });
      removed.push(root);
    } catch {
      // another test process is sweeping the same root
    }
  }
  return removed;
}

export const testRoot = mkdtempSync(path.join(os.tmpdir(), `${PREFIX}${process.pid}-`));
process.env.VMSYNTH_RUN_DIR = path.join(testRoot, 'run');
process.env.VMSYNTH_BASE_DIR = path.join(testRoot, 'bases');
process.env.VMSYNTH_KEY_DIR = path.join(testRoot, 'keys');
process.env.VMSYNTH_STORE_DIR = path.join(testRoot, 'store');
// In the background: it only touches the roots of dead processes.
void sweepStaleTestRoots().catch(() => undefined);

/** Removes the test's directories (call from t.teardown of the top-level test). */
export function removeTestRoot(): void {
  rmSync(testRoot, { recursive: true, force: true });
}
