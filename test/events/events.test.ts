/**
 * Events: the in-process Exchange (filters, OR of filters, ending subscriptions, topic rules), and the
 * events service of a real stratad (Subscribe, Publish, Forward, events published by namespaces and
 * content), including the unmodified `ctr events`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Exchange, validateTopic, type Subscription } from '../../src/events/exchange.js';
import { typedEvent, type Envelope as InternalEnvelope } from '../../src/events/types.js';
import { StrataError } from '../../src/core/errdefs.js';
import { StrataClient } from '../../src/api/clients/strata.js';
import type { Envelope } from '../../src/api/gen/containerd/services/events/v1/events.js';
import { NamespaceCreate, NamespaceDelete } from '../../src/api/gen/containerd/events/namespace.js';
import { ContentCreate, ContentDelete } from '../../src/api/gen/containerd/events/content.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { run } from '../helpers/ctr.js';
import type { TempDir } from '../helpers/temp.js';

const dirs: TempDir[] = [];
const clients: StrataClient[] = [];

afterAll(async () => {
  for (const c of clients) c.close();
  await stopAll();
  for (const t of dirs) await t.cleanup();
});

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

/** Reads up to n envelopes from a subscription, giving up after timeoutMs (returns what it has). */
async function take(sub: Subscription, n: number, timeoutMs = 200): Promise<InternalEnvelope[]> {
  const out: InternalEnvelope[] = [];
  const it = sub[Symbol.asyncIterator]();
  const deadline = Date.now() + timeoutMs;
  while (out.length < n) {
    const left = deadline - Date.now();
    if (left <= 0) break;
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      it.next(),
      new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), left))),
    ]);
    clearTimeout(timer);
    if (r === 'timeout' || r.done) break;
    out.push(r.value);
  }
  return out;
}

const topics = (envs: { topic: string }[]) => envs.map((e) => e.topic);
const ev = (data: Record<string, unknown> = {}) => typedEvent('containerd.events.Test', data);

describe('Exchange', () => {
  it('delivers everything to a subscriber without filters, in order', async () => {
    const ex = new Exchange();
    const sub = ex.subscribe();
    ex.publish('ns1', '/a', ev());
    ex.publish('ns2', '/b/c', ev({ x: 1 }));
    const got = await take(sub, 3);
    expect(topics(got)).toEqual(['/a', '/b/c']);
    expect(got[1]!.namespace).toBe('ns2');
    expect(got[1]!.event).toEqual({ kind: 'typed', type: 'containerd.events.Test', data: { x: 1 } });
    expect(got[0]!.timestamp).toBeInstanceOf(Date);
    sub.close();
  });

  it('filters on topic and namespace', async () => {
    const ex = new Exchange();
    const byTopic = ex.subscribe(['topic=="/namespaces/create"']);
    const byNs = ex.subscribe(['namespace==blue']);
    const both = ex.subscribe(['topic=="/namespaces/create",namespace==blue']);
    const notBlue = ex.subscribe(['namespace!=blue']);
    ex.publish('red', '/namespaces/create', ev());
    ex.publish('blue', '/namespaces/create', ev());
    ex.publish('blue', '/content/delete', ev());
    ex.publish('green', '/namespaces/create/extra', ev());
    const fmt = (envs: InternalEnvelope[]) => envs.map((e) => `${e.namespace} ${e.topic}`);
    expect(fmt(await take(byTopic, 5))).toEqual(['red /namespaces/create', 'blue /namespaces/create']);
    expect(fmt(await take(byNs, 5))).toEqual(['blue /namespaces/create', 'blue /content/delete']);
    expect(fmt(await take(both, 5))).toEqual(['blue /namespaces/create']);
    expect(fmt(await take(notBlue, 5))).toEqual(['red /namespaces/create', 'green /namespaces/create/extra']);
    ex.closeAll();
  });

  it('matches topics by regular expression', async () => {
    const ex = new Exchange();
    const sub = ex.subscribe(['topic~="^/namespaces/"']);
    const slashy = ex.subscribe(['topic~=/delete$/']);
    ex.publish('n', '/namespaces/create', ev());
    ex.publish('n', '/content/delete', ev());
    ex.publish('n', '/x/namespaces/create', ev());
    ex.publish('n', '/namespaces/delete', ev());
    expect(topics(await take(sub, 5))).toEqual(['/namespaces/create', '/namespaces/delete']);
    expect(topics(await take(slashy, 5))).toEqual(['/content/delete', '/namespaces/delete']);
    ex.closeAll();
  });

  it('ORs the filters of a list', async () => {
    const ex = new Exchange();
    const sub = ex.subscribe(['topic=="/a"', 'namespace==special', 'event.name==pick-me']);
    ex.publish('n', '/a', ev());
    ex.publish('n', '/b', ev());
    ex.publish('special', '/c', ev());
    ex.publish('n', '/d', ev({ name: 'pick-me' }));
    ex.publish('n', '/e', ev({ name: 'not-me' }));
    expect(topics(await take(sub, 10))).toEqual(['/a', '/c', '/d']);
    ex.closeAll();
  });

  it('filters on fields of typed events, not of opaque ones', async () => {
    const ex = new Exchange();
    const sub = ex.subscribe(['event.digest==sha256:abc']);
    const nested = ex.subscribe(['event.labels.team==storage']);
    ex.publish('n', '/content/delete', typedEvent('containerd.events.ContentDelete', { digest: 'sha256:abc' }));
    ex.publish('n', '/content/delete', typedEvent('containerd.events.ContentDelete', { digest: 'sha256:def' }));
    ex.publish('n', '/opaque', { kind: 'opaque', typeUrl: 'x.Y', value: Buffer.from('digest') });
    ex.publish('n', '/namespaces/create', typedEvent('containerd.events.NamespaceCreate', { name: 'n', labels: { team: 'storage' } }));
    const got = await take(sub, 5);
    expect(got).toHaveLength(1);
    expect(got[0]!.event).toEqual({ kind: 'typed', type: 'containerd.events.ContentDelete', data: { digest: 'sha256:abc' } });
    expect(topics(await take(nested, 5))).toEqual(['/namespaces/create']);
    ex.closeAll();
  });

  it('ends iteration on closeAll and on close, and forgets the subscriber', async () => {
    const ex = new Exchange();
    const a = ex.subscribe();
    const b = ex.subscribe(['topic=="/x"']);
    expect(ex.subscriberCount).toBe(2);
    const seen: string[] = [];
    const loopA = (async () => {
      for await (const e of a) seen.push(e.topic);
      return 'a done';
    })();
    const loopB = (async () => {
      for await (const e of b) seen.push(e.topic);
      return 'b done';
    })();
    ex.publish('n', '/x', ev());
    await sleep(10);
    ex.closeAll();
    expect(await loopA).toBe('a done');
    expect(await loopB).toBe('b done');
    expect(seen).toEqual(['/x', '/x']);
    expect(ex.subscriberCount).toBe(0);
    // Publishing after close reaches no one and does not throw.
    ex.publish('n', '/x', ev());

    const c = ex.subscribe();
    expect(ex.subscriberCount).toBe(1);
    const loopC = (async () => {
      for await (const e of c) seen.push(e.topic);
      return 'c done';
    })();
    await sleep(5);
    c.close();
    expect(await loopC).toBe('c done');
    expect(ex.subscriberCount).toBe(0);
    // Next on a closed subscription is done straight away.
    expect(await c[Symbol.asyncIterator]().next()).toEqual({ value: undefined, done: true });
  });

  it('drops a subscription when the consumer leaves the loop', async () => {
    const ex = new Exchange();
    const sub = ex.subscribe();
    ex.publish('n', '/one', ev());
    ex.publish('n', '/two', ev());
    for await (const e of sub) {
      expect(e.topic).toBe('/one');
      break;
    }
    expect(ex.subscriberCount).toBe(0);
  });

  it('drops a subscriber that falls too far behind without blocking publishers', async () => {
    const ex = new Exchange();
    const slow = ex.subscribe();
    const fast = ex.subscribe(['topic=="/last"']);
    for (let i = 0; i < 10_001; i++) ex.publish('n', '/flood', ev({ i }));
    ex.publish('n', '/last', ev());
    expect(ex.subscriberCount).toBe(1);
    expect(await take(slow, 1, 50)).toEqual([]);
    expect(topics(await take(fast, 1))).toEqual(['/last']);
    ex.closeAll();
  });

  it('rejects invalid topics and namespaces', () => {
    for (const topic of ['', 'x', '/', '/a//b', 'a/b', '/a/', '/a b', '/-a', '/' + 'a'.repeat(77)]) {
      const err = caught(() => validateTopic(topic));
      expect(err, `topic ${JSON.stringify(topic)}`).toBeInstanceOf(StrataError);
      expect((err as StrataError).kind).toBe('invalid argument');
      expect((err as StrataError).message).toContain('topic');
      const ex = new Exchange();
      const sub = ex.subscribe();
      const perr = caught(() => ex.publish('n', topic, ev()));
      expect((perr as StrataError).kind).toBe('invalid argument');
      sub.close();
    }
    expect((caught(() => validateTopic('')) as StrataError).detail).toBe(`must start with '/': topic ""`);
    expect((caught(() => validateTopic('/')) as StrataError).detail).toBe('must have at least one component: topic "/"');
    expect((caught(() => validateTopic('/a//b')) as StrataError).detail).toMatch(/^failed validation on component "": topic "\/a\/\/b"/);
    for (const ok of ['/a', '/namespaces/create', '/containerd.io/x-y_z/1']) expect(() => validateTopic(ok)).not.toThrow();

    const ex = new Exchange();
    expect((caught(() => ex.publish('', '/a', ev())) as StrataError).kind).toBe('invalid argument');
    expect((caught(() => ex.publish('bad ns', '/a', ev())) as StrataError).kind).toBe('invalid argument');
    expect((caught(() => ex.subscribe(['topic=='])) as StrataError).kind).toBe('invalid argument');
    expect(ex.subscriberCount).toBe(0);
  });

  it('forward keeps the envelope as given', async () => {
    const ex = new Exchange();
    const sub = ex.subscribe();
    const timestamp = new Date('2020-01-02T03:04:05.000Z');
    ex.forward({ timestamp, namespace: 'remote', topic: '/forwarded', event: ev({ a: 'b' }) });
    const [got] = await take(sub, 1);
    expect(got).toEqual({ timestamp, namespace: 'remote', topic: '/forwarded', event: ev({ a: 'b' }) });
  });
});

describe('events service', () => {
  let d: StartedDaemon;
  let c: StrataClient;

  beforeAll(async () => {
    d = await startDaemon();
    dirs.push(d.dir);
    c = d.client('default');
    clients.push(c);
  });

  /** How many Subscribe calls the daemon has started (logged at debug level just before subscribing). */
  const subscribeCalls = () => d.logs.split('\n').filter((l) => l.includes('"msg":"call"') && l.includes('"method":"Subscribe"')).length;

  async function waitFor(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${d.logs.slice(-2000)}`);
      await sleep(20);
    }
  }

  interface Stream {
    received: Envelope[];
    error: grpc.ServiceError | undefined;
    /** Waits for the i-th envelope (0-based). */
    nth(i: number, timeoutMs?: number): Promise<Envelope>;
    close(): void;
  }

  /** Subscribes and returns once the daemon has registered the subscription. */
  async function subscribe(filters: string[], client: StrataClient = c): Promise<Stream> {
    const before = subscribeCalls();
    const call = client.events.subscribe({ filters }, client.metadata());
    const s: Stream = {
      received: [],
      error: undefined,
      async nth(i, timeoutMs = 5_000) {
        await waitFor(() => s.received.length > i || s.error !== undefined, `event #${i} (filters ${JSON.stringify(filters)})`, timeoutMs);
        if (s.received.length <= i) throw s.error;
        return s.received[i]!;
      },
      close: () => call.cancel(),
    };
    call.on('data', (e: Envelope) => s.received.push(e));
    call.on('error', (e: grpc.ServiceError) => {
      if (e.code !== grpc.status.CANCELLED) s.error = e;
    });
    await waitFor(() => subscribeCalls() > before, 'the Subscribe call to reach the daemon');
    return s;
  }

  const publish = (client: StrataClient, topic: string, typeUrl: string, value: Uint8Array) =>
    client.call(client.events, client.events.publish, { topic, event: { typeUrl, value: Buffer.from(value) } });

  it('delivers /namespaces/create with the namespace and a decodable NamespaceCreate', async () => {
    const sub = await subscribe(['topic=="/namespaces/create"']);
    const all = await subscribe([]);
    await c.call(c.namespaces, c.namespaces.create, { namespace: { name: 'ev-created', labels: { k: 'v' } } });
    const e = await sub.nth(0);
    expect(e.topic).toBe('/namespaces/create');
    // As containerd's: the create event goes to the caller's namespace, not to the one created.
    expect(e.namespace).toBe('default');
    expect(e.timestamp).toBeInstanceOf(Date);
    expect(Math.abs(e.timestamp!.getTime() - Date.now())).toBeLessThan(60_000);
    expect(e.event?.typeUrl).toBe('containerd.events.NamespaceCreate');
    expect(NamespaceCreate.decode(e.event!.value)).toEqual({ name: 'ev-created', labels: { k: 'v' } });
    // Deleting it publishes /namespaces/delete, which the topic filter keeps out.
    await c.call(c.namespaces, c.namespaces.delete, { name: 'ev-created' });
    const del = await all.nth(1);
    expect(topics(all.received)).toEqual(['/namespaces/create', '/namespaces/delete']);
    expect(del.event?.typeUrl).toBe('containerd.events.NamespaceDelete');
    expect(NamespaceDelete.decode(del.event!.value).name).toBe('ev-created');
    await sleep(100);
    expect(sub.received).toHaveLength(1);
    sub.close();
    all.close();
  });

  it('delivers a published custom event to a subscriber of its topic only', async () => {
    const mine = await subscribe(['topic=="/strata-test/custom"']);
    const other = await subscribe(['topic=="/strata-test/other"']);
    const byNs = await subscribe(['namespace==pub-ns,topic~="^/strata-test/"']);
    const pc = c.with({ namespace: 'pub-ns' });
    clients.push(pc);
    const payload = Buffer.from([0, 1, 2, 250, 255]);
    await publish(pc, '/strata-test/custom', 'strata.test.Custom', payload);
    const e = await mine.nth(0);
    expect(e.topic).toBe('/strata-test/custom');
    expect(e.namespace).toBe('pub-ns');
    expect(e.event?.typeUrl).toBe('strata.test.Custom');
    expect(Buffer.from(e.event!.value)).toEqual(payload);
    expect((await byNs.nth(0)).topic).toBe('/strata-test/custom');
    // The other subscriber sees nothing until an event on its own topic comes.
    await publish(c, '/strata-test/other', 'strata.test.Other', Buffer.from('o'));
    const o = await other.nth(0);
    expect(o.topic).toBe('/strata-test/other');
    expect(other.received).toHaveLength(1);
    expect(mine.received).toHaveLength(1);
    // Namespace "default" is not pub-ns.
    await sleep(100);
    expect(byNs.received).toHaveLength(1);
    for (const s of [mine, other, byNs]) s.close();
  });

  it('re-encodes a published known event type so event.* filters and decoding work', async () => {
    const digest = 'sha256:' + 'ab'.repeat(32);
    const sub = await subscribe([`event.digest==${digest}`]);
    await publish(c, '/strata-test/known', 'containerd.events.ContentDelete', ContentDelete.encode({ digest: 'sha256:' + 'cd'.repeat(32) }).finish());
    await publish(c, '/strata-test/known', 'containerd.events.ContentDelete', ContentDelete.encode({ digest }).finish());
    const e = await sub.nth(0);
    expect(e.event?.typeUrl).toBe('containerd.events.ContentDelete');
    expect(ContentDelete.decode(e.event!.value).digest).toBe(digest);
    await sleep(100);
    expect(sub.received).toHaveLength(1);
    sub.close();
  });

  it('delivers a known event published with a prefixed type URL, and keeps the stream open', async () => {
    const sub = await subscribe(['topic~="^/strata-test/prefixed"']);
    const typeUrl = 'types.example.com/containerd.events.ContentDelete';
    const digest = 'sha256:' + 'ef'.repeat(32);
    await publish(c, '/strata-test/prefixed', typeUrl, ContentDelete.encode({ digest }).finish());
    const e = await sub.nth(0, 2_000);
    expect(e.event?.typeUrl).toBe(typeUrl);
    expect(ContentDelete.decode(e.event!.value).digest).toBe(digest);
    await publish(c, '/strata-test/prefixed-after', 'strata.test.X', Buffer.from('x'));
    expect((await sub.nth(1, 2_000)).topic).toBe('/strata-test/prefixed-after');
    sub.close();
  });

  it('fails a Subscribe with an invalid filter as containerd does (UNKNOWN: its error goes out unconverted)', async () => {
    const call = c.events.subscribe({ filters: ['topic=='] }, c.metadata());
    const err = await new Promise<grpc.ServiceError>((resolve, reject) => {
      call.on('data', () => reject(new Error('unexpected event')));
      call.once('error', resolve);
      call.once('end', () => reject(new Error('ended without an error')));
    });
    expect(err.code).toBe(grpc.status.UNKNOWN);
    expect(err.details).toMatch(/^subscription error: failed parsing subscription filters: .*invalid argument$/);
  });

  it('filters daemon events on their fields (event.name)', async () => {
    const sub = await subscribe(['event.name==ev-by-field']);
    await c.call(c.namespaces, c.namespaces.create, { namespace: { name: 'ev-not-this-one', labels: {} } });
    await c.call(c.namespaces, c.namespaces.create, { namespace: { name: 'ev-by-field', labels: {} } });
    await c.call(c.namespaces, c.namespaces.delete, { name: 'ev-by-field' });
    await sub.nth(1);
    // The create event is in the caller's namespace, the delete event in the namespace deleted (containerd's).
    expect(sub.received.map((e) => `${e.namespace} ${e.topic}`)).toEqual(['default /namespaces/create', 'ev-by-field /namespaces/delete']);
    sub.close();
  });

  it('rejects Publish with a bad topic, no event or no namespace', async () => {
    const kind = async (p: Promise<unknown>) => {
      const err = await p.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StrataError);
      return (err as StrataError).kind;
    };
    for (const topic of ['', 'x', '/', '/a//b']) {
      expect(await kind(publish(c, topic, 'strata.test.X', Buffer.alloc(0)))).toBe('invalid argument');
    }
    expect(await kind(c.call(c.events, c.events.publish, { topic: '/a', event: undefined }))).toBe('invalid argument');
    const bare = new StrataClient(d.address, {});
    clients.push(bare);
    expect(await kind(publish(bare, '/a', 'strata.test.X', Buffer.alloc(0)))).toBe('failed precondition');
    expect(await kind(c.call(c.events, c.events.forward, { envelope: undefined }))).toBe('invalid argument');
  });

  it('Forward delivers the envelope with its own namespace and timestamp', async () => {
    const sub = await subscribe(['topic=="/strata-test/forwarded"']);
    const fromOtherNs = await subscribe(['namespace==forwarded-ns']);
    const timestamp = new Date('2021-06-07T08:09:10.123Z');
    await c.call(c.events, c.events.forward, {
      envelope: {
        timestamp,
        namespace: 'forwarded-ns',
        topic: '/strata-test/forwarded',
        event: { typeUrl: 'strata.test.Forwarded', value: Buffer.from('fwd') },
      },
    });
    const e = await sub.nth(0);
    expect(e.namespace).toBe('forwarded-ns');
    expect(e.topic).toBe('/strata-test/forwarded');
    expect(e.timestamp?.toISOString()).toBe(timestamp.toISOString());
    expect(e.event?.typeUrl).toBe('strata.test.Forwarded');
    expect(Buffer.from(e.event!.value).toString()).toBe('fwd');
    expect((await fromOtherNs.nth(0)).topic).toBe('/strata-test/forwarded');
    // A forwarded envelope with an invalid namespace is refused.
    const err = await c
      .call(c.events, c.events.forward, {
        envelope: { timestamp, namespace: 'bad ns', topic: '/strata-test/forwarded', event: { typeUrl: 'x', value: Buffer.alloc(0) } },
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect((err as StrataError).kind).toBe('invalid argument');
    sub.close();
    fromOtherNs.close();
  });

  it('publishes /content/delete when a blob is deleted', async () => {
    const nc = c.with({ namespace: 'ev-content' });
    clients.push(nc);
    const data = Buffer.from(`blob for the delete event ${Date.now()}`);
    const digest = 'sha256:' + createHash('sha256').update(data).digest('hex');
    await nc.writeBlob(Readable.from([data]), { ref: 'ev-delete', expected: digest, total: data.length });
    const sub = await subscribe(['topic=="/content/delete"']);
    await nc.call(nc.content, nc.content.delete, { digest });
    const e = await sub.nth(0);
    expect(e.topic).toBe('/content/delete');
    expect(e.namespace).toBe('ev-content');
    expect(e.event?.typeUrl).toBe('containerd.events.ContentDelete');
    expect(ContentDelete.decode(e.event!.value)).toEqual({ digest });
    sub.close();
  });

  it('publishes /content/create with the digest and size in the writer namespace once a blob is committed', async () => {
    const nc = c.with({ namespace: 'ev-create' });
    clients.push(nc);
    const data = Buffer.from(`blob for the create event ${Date.now()}`);
    const digest = 'sha256:' + createHash('sha256').update(data).digest('hex');
    const sub = await subscribe(['topic=="/content/create"']);
    await nc.writeBlob(Readable.from([data]), { ref: 'ev-create', expected: digest, total: data.length });
    const e = await sub.nth(0);
    expect(e.topic).toBe('/content/create');
    expect(e.namespace).toBe('ev-create');
    expect(e.event?.typeUrl).toBe('containerd.events.ContentCreate');
    expect(ContentCreate.decode(e.event!.value)).toEqual({ digest, size: data.length });
    // event.* filters see its fields, as for every known type.
    const byDigest = await subscribe([`event.digest==${digest}`]);
    await nc.call(nc.content, nc.content.delete, { digest });
    await nc.writeBlob(Readable.from([data]), { ref: 'ev-create-again', expected: digest, total: data.length });
    expect((await byDigest.nth(0)).topic).toBe('/content/delete');
    expect((await byDigest.nth(1)).topic).toBe('/content/create');
    sub.close();
    byDigest.close();
  });

  it('publishes /content/create once per new record: not for a commit answered ALREADY_EXISTS, again for another namespace', async () => {
    const a = c.with({ namespace: 'ev-create-a' });
    const b = c.with({ namespace: 'ev-create-b' });
    clients.push(a, b);
    const data = Buffer.from(`blob committed twice ${Date.now()}`);
    const digest = 'sha256:' + createHash('sha256').update(data).digest('hex');
    const last = Buffer.from(`the last blob ${Date.now()}`);
    const lastDigest = 'sha256:' + createHash('sha256').update(last).digest('hex');
    const sub = await subscribe(['topic=="/content/create"']);
    await a.writeBlob(Readable.from([data]), { ref: 'first', expected: digest, total: data.length });
    // The digest known at open: ALREADY_EXISTS before any byte moves.
    await a.writeBlob(Readable.from([data]), { ref: 'second', expected: digest, total: data.length });
    // No digest at open: the bytes go in and the commit answers ALREADY_EXISTS.
    const late = await a.writeBlob(Readable.from([data]), { ref: 'third' }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect((late as StrataError).kind).toBe('already exists');
    // Another namespace gets its own record of the blob on disk (adopted, no bytes sent): an event of its own.
    await b.writeBlob(Readable.from([data]), { ref: 'other-ns', expected: digest, total: data.length });
    await a.writeBlob(Readable.from([last]), { ref: 'last', expected: lastDigest, total: last.length });
    await sub.nth(2);
    await sleep(100);
    const seen = sub.received.map((e) => [e.namespace, ContentCreate.decode(e.event!.value).digest]);
    expect(seen).toEqual([
      ['ev-create-a', digest],
      ['ev-create-b', digest],
      ['ev-create-a', lastDigest],
    ]);
    sub.close();
  });

  it('keeps the unmodified ctr 1.6 `ctr events` streaming past a /content/create it has no type for', async () => {
    const before = subscribeCalls();
    const events = spawn('ctr', ['--address', d.address, 'events'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let errOut = '';
    events.stdout.on('data', (b: Buffer) => (out += b.toString()));
    events.stderr.on('data', (b: Buffer) => (errOut += b.toString()));
    const exited = new Promise((resolve) => events.once('exit', resolve));
    try {
      await waitFor(() => subscribeCalls() > before, '`ctr events` to subscribe');
      const ingested = await run('ctr', ['--address', d.address, 'content', 'ingest', 'ctr-ev-ingest'], {
        input: `ingested by ctr ${Date.now()}`,
      });
      expect(ingested.code, ingested.stderr).toBe(0);
      const created = await run('ctr', ['--address', d.address, 'namespaces', 'create', 'after-content-create']);
      expect(created.code, created.stderr).toBe(0);
      await waitFor(() => out.includes('after-content-create'), `the namespace event from ctr events (stderr: ${errOut})`);
      // ctr 1.6 registers no ContentCreate type: it warns that it cannot unmarshal this one, and goes on.
      expect(errOut).toContain('cannot unmarshal an event from Any');
      expect(errOut).toContain('containerd.events.ContentCreate');
      expect(out).not.toContain('/content/create');
      expect(events.exitCode).toBeNull();
    } finally {
      events.kill('SIGTERM');
      await exited;
    }
  });

  it('ends a subscription cleanly when the client cancels it', async () => {
    const before = subscribeCalls();
    const s = await subscribe([]);
    expect(subscribeCalls()).toBe(before + 1);
    s.close();
    await sleep(100);
    // The daemon still publishes to others.
    const next = await subscribe(['topic=="/strata-test/after-cancel"']);
    await publish(c, '/strata-test/after-cancel', 'strata.test.X', Buffer.from('x'));
    expect((await next.nth(0)).topic).toBe('/strata-test/after-cancel');
    expect(s.error).toBeUndefined();
    next.close();
  });

  it('shows a namespace created by ctr in the unmodified `ctr events`', async () => {
    const before = subscribeCalls();
    const events = spawn('ctr', ['--address', d.address, 'events'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let errOut = '';
    events.stdout.on('data', (b: Buffer) => (out += b.toString()));
    events.stderr.on('data', (b: Buffer) => (errOut += b.toString()));
    const exited = new Promise((resolve) => events.once('exit', resolve));
    try {
      await waitFor(() => subscribeCalls() > before, '`ctr events` to subscribe');
      const created = await run('ctr', ['--address', d.address, 'namespaces', 'create', 'from-ctr']);
      expect(created.code, created.stderr).toBe(0);
      await waitFor(() => out.includes('\n'), `a line from ctr events (stderr: ${errOut})`);
      const line = out.split('\n').find((l) => l.includes('/namespaces/create'));
      expect(line, out).toBeDefined();
      // ctr prints: <timestamp> <namespace> <topic> <event as JSON>; the namespace is ctr's own ("default"), as
      // containerd publishes the create event in the caller's namespace.
      expect(line).toMatch(/ default \/namespaces\/create /);
      expect(line).toContain('"name":"from-ctr"');
    } finally {
      events.kill('SIGTERM');
      await exited;
    }
  });
});
