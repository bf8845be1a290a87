/**
 * The text logger: events are written at their level, and a FUSE read that
 * fails only because its session is ending is not reported as an error.
 */
import t from 'tap';
import { publish } from '../../lib/core/diagnostics.js';
import { VmsynthError } from '../../lib/core/errors.js';
import { attachLogger } from '../../lib/core/log.js';

function capture(level: string, fn: () => void): string {
  const lines: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = (chunk: string | Uint8Array) => {
    lines.push(String(chunk));
    return true;
  };
  const detach = attachLogger({ level });
  try {
    fn();
  } finally {
    detach();
    process.stderr.write = write;
  }
  return lines.join('');
}

t.test('a read failed by its session ending is debug; other failed reads are errors', async (t) => {
  const ending = {
    path: '/memory.img',
    offset: 4096,
    length: 4096,
    error: new VmsynthError('VMS_INTERRUPTED', 'the synthesis session ended'),
  };
  const broken = {
    path: '/disk.img',
    offset: 8192,
    length: 4096,
    error: new VmsynthError('VMS_OVERLAY_CORRUPT', 'chunk 3 does not match its hash'),
  };
  const warn = capture('warn', () => {
    publish('fuseReadFailed', ending);
    publish('fuseReadFailed', broken);
  });
  t.notMatch(warn, /memory\.img/, 'not shown at warn');
  t.match(warn, /vmsynth: FUSE read failed \(\/disk\.img at 8192\): VMS_OVERLAY_CORRUPT/, 'a real failure is shown');
  const debug = capture('debug', () => publish('fuseReadFailed', ending));
  t.match(debug, /FUSE read failed \(\/memory\.img at 4096\): VMS_INTERRUPTED/, 'shown at debug');
});

t.test('levels filter events', async (t) => {
  const quiet = capture('error', () => publish('staleCleaned', { kind: 'work directory', what: '/x' }));
  t.equal(quiet, '');
  const shown = capture('warn', () => publish('staleCleaned', { kind: 'work directory', what: '/x' }));
  t.match(shown, /removed stale work directory left by a crashed run: \/x/);
});
