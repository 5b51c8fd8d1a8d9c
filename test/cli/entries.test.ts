/**
 * strata's command table (src/cli/entries.ts), which main.ts reads to load only the module of the command it
 * runs: its names and aliases are those of the modules it loads, and a plain command line loads no other
 * command's module, nor the offline fsck or the daemon's metadata store.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ENTRY_MODULES } from '../../src/cli/entries.js';
import { REPO } from '../helpers/paths.js';
import { tempDir } from '../helpers/temp.js';

describe('the command table', () => {
  it('names every command by exactly the name and aliases its module gives it', async () => {
    const seen = new Set<string>();
    for (const m of ENTRY_MODULES) {
      const e = await m.load();
      expect(m.names).toEqual([e.name, ...(e.aliases ?? [])]);
      for (const n of m.names) {
        expect(seen.has(n)).toBe(false);
        seen.add(n);
      }
    }
    expect(seen.size).toBeGreaterThan(20);
  });

  it('loads only the module of the command it runs: no other command, no fsck, no metadata store', async () => {
    const t = await tempDir('strata-cli-entries-');
    try {
      // A module loader hook that lists every module the CLI loads, in a real `strata` process.
      const hooks = join(t.path, 'hooks.mjs');
      const list = join(t.path, 'loaded.txt');
      await writeFile(hooks, `import { appendFileSync } from 'node:fs';\nexport async function load(url, ctx, next) { appendFileSync(${JSON.stringify(list)}, url + '\\n'); return next(url, ctx); }\n`);
      const reg = join(t.path, 'reg.mjs');
      await writeFile(reg, `import { register } from 'node:module';\nregister(${JSON.stringify(`file://${hooks}`)});\n`);
      // No daemon at the address: the command fails to connect, after loading what it needs.
      const r = await promisify(execFile)(process.execPath, ['--import', reg, join(REPO, 'bin', 'strata'), '--address', join(t.path, 'none.sock'), '--connect-timeout', '100ms', 'image', 'ls']).catch((err: { code: number; stderr: string }) => err);
      expect('code' in r ? r.code : 0).toBe(1);
      const { readFile } = await import('node:fs/promises');
      const loaded = (await readFile(list, 'utf8')).split('\n').filter((u) => u.includes('/dist/src/'));
      const rel = loaded.map((u) => u.slice(u.indexOf('/dist/src/') + '/dist/src/'.length));
      expect(rel).toContain('cli/images.js');
      for (const other of ['cli/du.js', 'cli/tasks.js', 'cli/snapshots.js', 'cli/containers.js', 'cli/fsck.js', 'cli/gc.js', 'metadata/index.js', 'fsck/index.js']) {
        expect(rel).not.toContain(other);
      }
    } finally {
      await t.cleanup();
    }
  });
});
