/** containerd's snapshotter suite on the native backend (plain directories, a copy of the parent per snapshot). */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNativeSnapshotter, type NativeOptions } from '../../src/snapshots/native/index.js';
import { snapshotterSuite, type SnapshotterFactory } from './testsuite.js';

function factory(opts: NativeOptions = {}): SnapshotterFactory {
  return async () => {
    // The root is a subdirectory of a private directory, so that the suite can watch what appears beside it.
    const base = await mkdtemp(join(tmpdir(), 'strata-native-'));
    const root = join(base, 'root');
    try {
      await mkdir(root);
      const sn = await openNativeSnapshotter(root, opts);
      return {
        sn,
        root,
        reopen: () => openNativeSnapshotter(root, opts),
        cleanup: () => rm(base, { recursive: true, force: true }),
      };
    } catch (err) {
      await rm(base, { recursive: true, force: true });
      throw err;
    }
  };
}

// The default: GNU cp -a.
snapshotterSuite('native', factory());

// The fallback copier written in Node; the two long chains add nothing about copying and are left to the above.
snapshotterSuite('native (node copy)', factory({ copy: 'node' }), { skip: ['128 layers mount', '500 layer chain'] });
