import t from 'tap';
import { ChunkMap, ChunkSource, CHUNK_SIZE } from '../../lib/fs/chunk-map.js';

t.test('a new map has one source everywhere and rounds the last chunk up', async (t) => {
  const m = new ChunkMap(3 * CHUNK_SIZE + 1);
  t.equal(m.chunkCount, 4);
  t.equal(m.count(ChunkSource.BASE), 4);
  t.same(
    m.runs(0, 10 * CHUNK_SIZE),
    [{ source: ChunkSource.BASE, offset: 0, length: 3 * CHUNK_SIZE + 1 }],
    'clamped to the image end',
  );
});

t.test('runs split at source changes and keep unaligned edges', async (t) => {
  const m = new ChunkMap(8 * CHUNK_SIZE);
  m.set(2, ChunkSource.ZERO);
  m.set(3, ChunkSource.ZERO);
  m.set(5, ChunkSource.MISSING);
  t.same(m.runs(100, 6 * CHUNK_SIZE), [
    { source: ChunkSource.BASE, offset: 100, length: 2 * CHUNK_SIZE - 100 },
    { source: ChunkSource.ZERO, offset: 2 * CHUNK_SIZE, length: 2 * CHUNK_SIZE },
    { source: ChunkSource.BASE, offset: 4 * CHUNK_SIZE, length: CHUNK_SIZE },
    { source: ChunkSource.MISSING, offset: 5 * CHUNK_SIZE, length: CHUNK_SIZE },
    { source: ChunkSource.BASE, offset: 6 * CHUNK_SIZE, length: 100 },
  ]);
  t.equal(m.count(ChunkSource.ZERO), 2);
  t.equal(m.get(5), ChunkSource.MISSING);
});

t.test('reads past the end yield nothing; a read inside one chunk is one run', async (t) => {
  const m = new ChunkMap(2 * CHUNK_SIZE);
  t.same(m.runs(2 * CHUNK_SIZE, 10), []);
  t.same(m.runs(10, 20), [{ source: ChunkSource.BASE, offset: 10, length: 20 }]);
});

t.test('bad sizes and chunk numbers are typed errors', async (t) => {
  t.throws(() => new ChunkMap(-1), { code: 'VMS_INTERNAL' });
  t.throws(() => new ChunkMap(4096, 1000), { code: 'VMS_INTERNAL' });
  const m = new ChunkMap(CHUNK_SIZE);
  t.throws(() => m.get(1), { code: 'VMS_INTERNAL' });
  t.throws(() => m.set(-1, ChunkSource.BASE), { code: 'VMS_INTERNAL' });
});
