/**
 * The layering of src/ (docs/architecture.md): every folder has a rank and imports only from folders of a
 * lower rank (or from itself). The generated protobuf code (src/api/gen) is part of the gRPC layer.
 * A new folder must be given a rank here, so the rule is decided when the folder is made.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = fileURLToPath(new URL('../../src', import.meta.url));

/** Lower ranks are lower layers. Equal ranks may not import each other. */
const RANK: Record<string, number> = {
  core: 0, // Mount, Descriptor, labels, identifiers, errors, SQLite helpers: imports nothing of Strata's
  log: 0,
  'version.ts': 0,
  filters: 1,
  plugin: 1,
  config: 1,
  mount: 1, // mounting, and the one parser of overlay options
  estargz: 1.5, // the eStargz format (footer, TOC, chunks, writer): imports core and log only
  fuse: 1.5, // serving a read-only LayerSource over FUSE (imports core, log only)
  content: 2,
  events: 2,
  remotes: 2.5, // the registry client (OCI distribution API): images pull and push with it, lazy snapshotters read ranges
  metrics: 2, // Prometheus exposition, the debug endpoint, the SIGUSR1 dump: reads plugins through its own interfaces
  snapshots: 3, // backends: never metadata, never the gRPC layer
  diff: 3,
  gc: 3, // the algorithm and the scheduler; metadata hands it records
  metadata: 4, // owns every table, including what GC reads and deletes
  images: 5,
  runtime: 6,
  api: 7, // translation only; its clients (the proxy snapshotter) live here too
  fsck: 7.5, // the offline checker: reads metadata, content and snapshot stores directly; the CLI runs it
  daemon: 8,
  cli: 8,
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

const folderOf = (file: string): string => relative(SRC, file).split('/')[0]!;

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'";]*?\bfrom\s+['"](\.{1,2}\/[^'"]+)['"]/g)) out.push(m[1]!);
  for (const m of text.matchAll(/\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g)) out.push(m[1]!);
  return out;
}

describe('the layers of src/', () => {
  const files = sourceFiles(SRC);

  it('gives every folder a rank', () => {
    const folders = [...new Set(files.map(folderOf))].sort();
    expect(folders.filter((f) => RANK[f] === undefined)).toEqual([]);
  });

  it('has every import point to a lower layer or to the same folder', () => {
    const violations: string[] = [];
    for (const file of files) {
      const from = folderOf(file);
      for (const spec of imports(file)) {
        const target = resolve(dirname(file), spec);
        if (!target.startsWith(SRC + '/')) continue;
        const to = folderOf(target.replace(/\.js$/, '.ts'));
        if (to === from) continue;
        if (!(RANK[to]! < RANK[from]!)) violations.push(`${relative(SRC, file)} -> ${to}`);
      }
    }
    expect(violations).toEqual([]);
  });

  it('keeps SQL inside metadata and the snapshot backends', () => {
    const sql = /\.(?:prepare|exec)\(\s*[`'"]\s*(?:SELECT|INSERT|UPDATE|DELETE|CREATE|WITH)\b/i;
    const outside = files.filter((f) => !['metadata', 'snapshots', 'core'].includes(folderOf(f)) && sql.test(readFileSync(f, 'utf8')));
    expect(outside.map((f) => relative(SRC, f))).toEqual([]);
  });
});
