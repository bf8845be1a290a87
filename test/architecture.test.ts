/**
 * The house rules of lib/, checked on the sources (docs/ARCHITECTURE.md
 * explains them): each folder is a layer, and a module imports only from its
 * own folder or from layers below it; no module imports itself back through
 * a cycle; no file is over 400 lines. Type-only imports count too.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const lib = path.join(root, 'lib');

/** The layers, lowest first: a folder may import from folders of a lower rank. */
export const LAYERS: Record<string, number> = {
  core: 0,
  types: 0,
  fs: 1,
  stream: 1,
  vm: 2,
  overlay: 3,
  guest: 3,
  protocol: 4,
  store: 4,
  handoff: 4,
  synth: 5,
  offline: 5,
  client: 5,
  server: 6,
  web: 6,
  cli: 7,
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return /\.(ts|cts)$/.test(e.name) ? [p] : [];
  });
}

const files = sources(lib);
const rel = (f: string) => path.relative(lib, f);
const folder = (f: string) => rel(f).split(path.sep)[0]!;

/** The lib modules a file imports (static, re-exports and literal dynamic imports), as paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [
    ...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)/g),
  ].map((m) => m[1] ?? m[2]!);
  return specs
    .filter((s) => s.startsWith('.'))
    .map((s) =>
      path
        .resolve(path.dirname(file), s)
        .replace(/\.js$/, '.ts')
        .replace(/\.cjs$/, '.cts'),
    )
    .filter((p) => p.startsWith(lib + path.sep));
}

const graph = new Map(files.map((f) => [f, importsOf(f)]));

t.test('every lib folder has a layer', async (t) => {
  const folders = [...new Set(files.map(folder))].sort();
  t.same(
    folders.filter((f) => LAYERS[f] === undefined),
    [],
    `layers of ${folders.join(', ')}`,
  );
});

t.test('no module imports a layer above its own (or beside it)', async (t) => {
  const bad: string[] = [];
  for (const [f, deps] of graph) {
    for (const d of deps) {
      const [from, to] = [folder(f), folder(d)];
      if (from !== to && !(LAYERS[to]! < LAYERS[from]!))
        bad.push(`${rel(f)} (${from}, layer ${LAYERS[from]}) imports ${rel(d)} (${to}, layer ${LAYERS[to]})`);
    }
  }
  t.same(bad, [], 'every import points down');
});

t.test('no import cycle', async (t) => {
  // Tarjan's strongly connected components: a component of more than one module, or a module importing itself, is a cycle.
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const cycles: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        comp.push(rel(w));
      } while (w !== v);
      if (comp.length > 1 || graph.get(v)!.includes(v)) cycles.push(comp.sort());
    }
  };
  for (const f of graph.keys()) if (!index.has(f)) visit(f);
  t.same(cycles, [], 'no module reaches itself through its imports');
});

t.test('the import scan sees imports', async (t) => {
  // Guards the two checks above against a scan that finds nothing.
  const server = graph.get(path.join(lib, 'server', 'server.ts'))!.map(rel);
  t.ok(
    server.includes(path.join('server', 'connection.ts')) && server.includes(path.join('core', 'errors.ts')),
    'server.ts imports connection.ts and core/errors.ts',
  );
  t.ok([...graph.values()].flat().length > 300, 'hundreds of imports across lib/');
});

t.test('no lib file is over 400 lines', async (t) => {
  const long = files
    .map((f) => ({ f: rel(f), n: readFileSync(f, 'utf8').split('\n').length }))
    .filter((x) => x.n > 400);
  t.same(long, [], 'files over 400 lines');
});
