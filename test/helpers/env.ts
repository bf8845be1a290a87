/**
 * Test isolation: each test file gets its own run, base and key directories, so
 * parallel test files never see each other's sessions or bases. Import this
 * first in any test that touches lib/ paths.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const testRoot = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-test-'));
process.env.VMSYNTH_RUN_DIR = path.join(testRoot, 'run');
process.env.VMSYNTH_BASE_DIR = path.join(testRoot, 'bases');
process.env.VMSYNTH_KEY_DIR = path.join(testRoot, 'keys');

/** Removes the test's directories (call from t.teardown of the top-level test). */
export function removeTestRoot(): void {
  rmSync(testRoot, { recursive: true, force: true });
}
