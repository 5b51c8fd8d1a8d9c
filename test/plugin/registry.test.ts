/**
 * The plugin registry without a daemon: dependency ordering, and PluginSet.load over a test registration
 * list (passed as load's second argument) recording ok / skipped / error outcomes, config, disabled plugins,
 * lookups between plugins and close hooks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import {
  PluginSet,
  PluginType,
  SkipPlugin,
  pluginUri,
  register,
  registered,
  sortByDependencies,
  type InitContext,
  type LoadOptions,
  type PluginRegistration,
} from '../../src/plugin/index.js';
import { silentLogger } from '../../src/log/index.js';
import { stopAll } from '../helpers/daemon.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

type Reg = PluginRegistration<unknown, any>;

const R = (type: PluginType, id: string, requires?: (PluginType | '*')[]) => ({ type, id, requires });
const ids = (regs: readonly { id: string }[]) => regs.map((r) => r.id);

let tmp: TempDir;

beforeAll(async () => {
  tmp = await tempDir('strata-plugin-');
});
afterAll(async () => {
  await stopAll();
  await tmp?.cleanup();
});

function opts(extra: Partial<LoadOptions> = {}): LoadOptions {
  return {
    root: join(tmp.path, 'root'),
    state: join(tmp.path, 'state'),
    address: join(tmp.path, 'state', 'test.sock'),
    log: silentLogger,
    configFor: (_uri, defaults) => defaults,
    ...extra,
  };
}

describe('sortByDependencies', () => {
  it('puts every plugin after the plugins of the types it requires', () => {
    const regs = [
      R(PluginType.GRPC, 'content', [PluginType.Metadata]),
      R(PluginType.Metadata, 'sqlite', [PluginType.Content, PluginType.Event]),
      R(PluginType.Content, 'content'),
      R(PluginType.Event, 'exchange'),
    ];
    const out = sortByDependencies(regs);
    expect(ids(out)).toEqual(['content', 'exchange', 'sqlite', 'content']);
    expect(out.map((r) => r.type)).toEqual([PluginType.Content, PluginType.Event, PluginType.Metadata, PluginType.GRPC]);
    // Every plugin of a required type comes first, not just one.
    const two = sortByDependencies([
      R(PluginType.GRPC, 'snapshots', [PluginType.Snapshot]),
      R(PluginType.Snapshot, 'native'),
      R(PluginType.Snapshot, 'overlayfs'),
    ]);
    expect(ids(two)).toEqual(['native', 'overlayfs', 'snapshots']);
    // The input is not reordered in place.
    expect(ids(regs)).toEqual(['content', 'sqlite', 'content', 'exchange']);
  });

  it("places '*' plugins after every other plugin", () => {
    const out = sortByDependencies([
      R(PluginType.GRPC, 'introspection', ['*']),
      R(PluginType.Content, 'content'),
      R(PluginType.GRPC, 'version'),
      R(PluginType.Metadata, 'sqlite', [PluginType.Content]),
      R(PluginType.Internal, 'last', ['*']),
      R(PluginType.Event, 'exchange'),
    ]);
    const order = ids(out);
    expect(order.slice(-2).sort()).toEqual(['introspection', 'last']);
    expect(order.slice(0, 4)).toEqual(['content', 'version', 'sqlite', 'exchange']);
    // Two '*' plugins do not wait for each other: registration order between them.
    expect(order.slice(-2)).toEqual(['introspection', 'last']);
  });

  it('keeps registration order among independent plugins', () => {
    const regs = [
      R(PluginType.GRPC, 'g1'),
      R(PluginType.Content, 'c1'),
      R(PluginType.Event, 'e1'),
      R(PluginType.GRPC, 'g2'),
      R(PluginType.Lease, 'l1'),
    ];
    expect(ids(sortByDependencies(regs))).toEqual(['g1', 'c1', 'e1', 'g2', 'l1']);
    // Requiring a type nobody registers is not an ordering constraint.
    expect(ids(sortByDependencies([R(PluginType.GRPC, 'a', [PluginType.Differ]), R(PluginType.Content, 'b')]))).toEqual(['a', 'b']);
    // Dependencies of a later plugin do not pull unrelated earlier ones around.
    expect(
      ids(sortByDependencies([R(PluginType.GRPC, 'x'), R(PluginType.Lease, 'y', [PluginType.Content]), R(PluginType.Event, 'z'), R(PluginType.Content, 'c')])),
    ).toEqual(['x', 'c', 'y', 'z']);
  });

  it('throws on a dependency cycle', () => {
    expect(() =>
      sortByDependencies([R(PluginType.Content, 'a', [PluginType.Metadata]), R(PluginType.Metadata, 'b', [PluginType.Content])]),
    ).toThrow(/plugin dependency cycle at io\.containerd\.(content|metadata)\.v1\.(a|b)/);
    expect(() =>
      sortByDependencies([
        R(PluginType.Content, 'a', [PluginType.Event]),
        R(PluginType.Event, 'b', [PluginType.Lease]),
        R(PluginType.Lease, 'c', [PluginType.Content]),
      ]),
    ).toThrow(/cycle/);
    // A '*' plugin that a normal plugin depends on is a cycle too.
    expect(() => sortByDependencies([R(PluginType.GRPC, 'all', ['*']), R(PluginType.Internal, 'needs-grpc', [PluginType.GRPC])])).toThrow(/cycle/);
  });
});

describe('register', () => {
  it('refuses to register the same type and id twice', () => {
    const reg: Reg = { type: PluginType.Internal, id: `test-dup-${process.pid}`, init: () => 1 };
    const before = registered().length;
    register(reg);
    expect(registered().length).toBe(before + 1);
    expect(() => register({ ...reg })).toThrow(`plugin ${pluginUri(reg.type, reg.id)} registered twice`);
    expect(registered().length).toBe(before + 1);
  });
});

describe('PluginSet.load', () => {
  it('records ok, skipped and error outcomes in dependency order', async () => {
    const regs: Reg[] = [
      { type: PluginType.GRPC, id: 'svc', requires: [PluginType.Content], init: () => 'svc-instance' },
      { type: PluginType.Content, id: 'good', init: () => ({ name: 'good' }) },
      {
        type: PluginType.Snapshot,
        id: 'zfs',
        init: () => {
          throw new SkipPlugin('no zfs pool found');
        },
      },
      {
        type: PluginType.Differ,
        id: 'broken',
        init: async () => {
          throw new Error('boom');
        },
      },
    ];
    const set = await PluginSet.load(opts(), regs);
    expect(set.loaded.map((l) => pluginUri(l.registration.type, l.registration.id))).toEqual([
      'io.containerd.content.v1.good',
      'io.containerd.grpc.v1.svc',
      'io.containerd.snapshotter.v1.zfs',
      'io.containerd.differ.v1.broken',
    ]);
    const byId = new Map(set.loaded.map((l) => [l.registration.id, l]));
    expect(byId.get('good')!.status).toEqual({ state: 'ok' });
    expect(byId.get('good')!.instance).toEqual({ name: 'good' });
    expect(byId.get('svc')!.status.state).toBe('ok');
    const skipped = byId.get('zfs')!.status;
    expect(skipped.state).toBe('skipped');
    if (skipped.state === 'skipped') {
      expect(skipped.reason).toBe('no zfs pool found: skip plugin');
      expect(skipped.reason.endsWith(': skip plugin')).toBe(true);
    }
    const failed = byId.get('broken')!.status;
    expect(failed.state).toBe('error');
    if (failed.state === 'error') expect(failed.error.message).toBe('boom');
    // Non-Error throws become Errors too.
    const weird = await PluginSet.load(opts(), [
      {
        type: PluginType.Internal,
        id: 'weird',
        init: () => {
          throw 'a string';
        },
      },
    ]);
    const ws = weird.loaded[0]!.status;
    expect(ws.state).toBe('error');
    if (ws.state === 'error') {
      expect(ws.error).toBeInstanceOf(Error);
      expect(ws.error.message).toBe('a string');
    }
  });

  it('SkipPlugin carries containerd\'s wording', () => {
    const e = new SkipPlugin('btrfs not supported');
    expect(e).toBeInstanceOf(Error);
    expect(e.message).toBe('btrfs not supported: skip plugin');
  });

  it('gives a plugin depending on a failed one an error from ic.get', async () => {
    let getError: unknown;
    let skippedError: unknown;
    const regs: Reg[] = [
      {
        type: PluginType.Metadata,
        id: 'db',
        requires: [PluginType.Content],
        init: (ic) => {
          try {
            ic.get(PluginType.Content, 'store');
          } catch (err) {
            getError = err;
          }
          ic.get(PluginType.Content, 'store');
          return 'unreachable';
        },
      },
      {
        type: PluginType.Content,
        id: 'store',
        init: () => {
          throw new Error('disk on fire');
        },
      },
      {
        type: PluginType.GRPC,
        id: 'uses-skipped',
        requires: [PluginType.Snapshot],
        init: (ic) => {
          try {
            ic.get(PluginType.Snapshot);
          } catch (err) {
            skippedError = err;
          }
          return 'fine';
        },
      },
      {
        type: PluginType.Snapshot,
        id: 'skipper',
        init: () => {
          throw new SkipPlugin('not here');
        },
      },
    ];
    const set = await PluginSet.load(opts(), regs);
    expect(getError).toBeInstanceOf(Error);
    expect((getError as Error).message).toBe('plugin io.containerd.content.v1.store failed: disk on fire');
    const db = set.loaded.find((l) => l.registration.id === 'db')!;
    expect(db.status.state).toBe('error');
    if (db.status.state === 'error') expect(db.status.error.message).toContain('disk on fire');
    expect(db.instance).toBeUndefined();
    expect((skippedError as Error).message).toBe('plugin io.containerd.snapshotter.v1 skipped: not here: skip plugin');
    // Lookups from outside: failed, skipped and missing plugins all throw; getAll only lists ok ones.
    expect(() => set.get(PluginType.Metadata, 'db')).toThrow(/failed/);
    expect(() => set.get(PluginType.Lease)).toThrow('plugin io.containerd.lease.v1 not loaded');
    expect(set.get<string>(PluginType.GRPC, 'uses-skipped')).toBe('fine');
    expect([...set.getAll(PluginType.Content).keys()]).toEqual([]);
    expect([...set.getAll(PluginType.GRPC).entries()]).toEqual([['uses-skipped', 'fine']]);
  });

  it('get without an id returns the ok instance of a type even when another of that type failed', async () => {
    const set = await PluginSet.load(opts(), [
      {
        type: PluginType.Snapshot,
        id: 'bad',
        init: () => {
          throw new Error('nope');
        },
      },
      { type: PluginType.Snapshot, id: 'good', init: () => 'good-snapshotter' },
    ]);
    expect(set.get<string>(PluginType.Snapshot)).toBe('good-snapshotter');
    expect(() => set.get(PluginType.Snapshot, 'bad')).toThrow('plugin io.containerd.snapshotter.v1.bad failed: nope');
  });

  it('leaves disabled plugins out entirely', async () => {
    let initCalled = false;
    const set = await PluginSet.load(opts({ disabled: ['io.containerd.grpc.v1.off', 'io.containerd.grpc.v1.not-registered'] }), [
      { type: PluginType.GRPC, id: 'on', init: () => 'on' },
      {
        type: PluginType.GRPC,
        id: 'off',
        init: () => {
          initCalled = true;
          return 'off';
        },
      },
    ]);
    expect(initCalled).toBe(false);
    expect(set.loaded.map((l) => l.registration.id)).toEqual(['on']);
    expect(() => set.get(PluginType.GRPC, 'off')).toThrow('not loaded');
  });

  it('gives each plugin its own root/state, its merged config, and extra registrations', async () => {
    const seen: InitContext<any>[] = [];
    const o = opts({
      configFor: (uri, defaults) => (uri === 'io.containerd.internal.v1.cfg' ? { ...defaults, b: 'file' } : defaults),
      extra: [{ type: PluginType.Internal, id: 'extra', requires: [PluginType.Internal], init: (ic) => (seen.push(ic), 'x') }],
    });
    const set = await PluginSet.load(o, [
      { type: PluginType.Internal, id: 'cfg', config: () => ({ a: 1, b: 'default' }), init: (ic) => (seen.push(ic), ic.config) },
    ]);
    expect(set.loaded.map((l) => l.registration.id)).toEqual(['cfg', 'extra']);
    const ic = seen[0]!;
    expect(ic.root).toBe(join(o.root, 'io.containerd.internal.v1.cfg'));
    expect(ic.state).toBe(join(o.state, 'io.containerd.internal.v1.cfg'));
    expect(ic.daemonRoot).toBe(o.root);
    expect(ic.daemonState).toBe(o.state);
    expect(ic.address).toBe(o.address);
    expect(ic.config).toEqual({ a: 1, b: 'file' });
    expect(set.get(PluginType.Internal, 'cfg')).toEqual({ a: 1, b: 'file' });
    expect(seen[1]!.config).toEqual({});
    // ic.plugins() is live and shows what has loaded so far.
    expect(seen[1]!.plugins().map((p) => p.registration.id)).toEqual(['cfg', 'extra']);
    // Meta defaults to the host platform.
    expect(set.loaded[0]!.meta.platforms[0]!.os).toBe(process.platform);
  });

  it('runs onClose hooks in reverse order, once, and keeps going after a failing one', async () => {
    const closed: string[] = [];
    const mk = (id: string, requires?: PluginType[], fail = false): Reg => ({
      type: id === 'a' ? PluginType.Content : id === 'b' ? PluginType.Metadata : PluginType.GRPC,
      id,
      requires,
      init: (ic) => {
        ic.onClose(async () => {
          closed.push(`${id}:1`);
        });
        ic.onClose(() => {
          closed.push(`${id}:2`);
          if (fail) throw new Error('close failed');
        });
        return id;
      },
    });
    const set = await PluginSet.load(opts(), [mk('c', [PluginType.Metadata]), mk('b', [PluginType.Content], true), mk('a')]);
    expect(set.loaded.map((l) => l.registration.id)).toEqual(['a', 'b', 'c']);
    await set.close(silentLogger);
    expect(closed).toEqual(['c:2', 'c:1', 'b:2', 'b:1', 'a:2', 'a:1']);
    await set.close(silentLogger);
    expect(closed).toHaveLength(6);
  });
});
