/**
 * The exposition writer (escaping, histograms, families written once, a failing collector left out), the
 * gRPC observer on its own (codes, in-flight calls, a call handled twice), and the config keys ([metrics],
 * [debug] address: loopback only).
 */
import { describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Histogram, Registry, TextWriter, formatValue } from '../../src/metrics/exposition.js';
import { GrpcMetrics } from '../../src/metrics/grpc.js';
import { parseListenAddress, isLoopback } from '../../src/core/address.js';
import { defaultConfig, loadConfig } from '../../src/config/index.js';
import { run } from '../helpers/ctr.js';

const md = (ns?: string) => ({ get: (k: string) => (k === 'containerd-namespace' && ns ? [ns] : []) });

describe('TextWriter', () => {
  it('escapes label values and help, and formats special values', () => {
    const w = new TextWriter();
    w.family('x_total', 'counter', 'a \\ help\nline').sample('x_total', [['path', 'a"b\\c\nd']], 3);
    expect(w.text()).toBe('# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\nx_total{path="a\\"b\\\\c\\nd"} 3\n');
    expect([formatValue(Infinity), formatValue(-Infinity), formatValue(NaN), formatValue(0.25)]).toEqual(['+Inf', '-Inf', 'NaN', '0.25']);
  });

  it('writes histograms cumulatively with +Inf, _sum and _count', () => {
    const h = new Histogram([0.1, 1]);
    for (const v of [0.05, 0.1, 0.5, 7]) h.observe(v);
    const w = new TextWriter().family('h_seconds', 'histogram', 'h');
    h.write(w, 'h_seconds', [['m', 'x']]);
    expect(w.text().split('\n').slice(2, -1)).toEqual([
      'h_seconds_bucket{m="x",le="0.1"} 2',
      'h_seconds_bucket{m="x",le="1"} 3',
      'h_seconds_bucket{m="x",le="+Inf"} 4',
      'h_seconds_sum{m="x"} 7.65',
      'h_seconds_count{m="x"} 4',
    ]);
  });

  it('refuses a family written twice, and a registry leaves a failing collector out', async () => {
    expect(() => new TextWriter().family('a', 'gauge', 'a').family('a', 'gauge', 'a')).toThrow('metric family a written twice');
    const errors: string[] = [];
    const r = new Registry((name) => errors.push(name))
      .add('ok', (w) => void w.single('one', 'gauge', 'one', 1))
      .add('broken', async () => {
        throw new Error('disk gone');
      });
    expect((await r.render()).toString()).toBe('# HELP one one\n# TYPE one gauge\none 1\n');
    expect(errors).toEqual(['broken']);
  });
});

describe('GrpcMetrics', () => {
  it('counts by code, keeps the calls in flight, and counts a call handled twice once', async () => {
    const g = new GrpcMetrics(true);
    g.register({ prepare: { path: '/svc.S/Prepare', requestStream: false, responseStream: false }, w: { path: '/svc.S/Write', requestStream: true, responseStream: false } });
    const a = g.started('/svc.S/Prepare', 'unary', md('ns1'));
    const b = g.started('/svc.S/Write', 'bidi_stream', md());
    g.received(b);
    g.received(b);
    expect(g.inflightCalls().map((x) => [x.method, x.namespace, x.type])).toEqual(
      expect.arrayContaining([
        ['/svc.S/Prepare', 'ns1', 'unary'],
        ['/svc.S/Write', '', 'client_stream'],
      ]),
    );
    g.handled(a, 5);
    g.handled(a, 0);
    g.handled(b, 0);
    expect(g.inflightCalls()).toEqual([]);
    const w = new TextWriter();
    g.write(w);
    const text = w.text();
    expect(text).toContain('grpc_server_handled_total{grpc_code="NotFound",grpc_method="Prepare",grpc_service="svc.S",grpc_type="unary"} 1\n');
    expect(text).toContain('grpc_server_handled_total{grpc_code="OK",grpc_method="Prepare",grpc_service="svc.S",grpc_type="unary"} 0\n');
    expect(text).toContain('grpc_server_msg_received_total{grpc_method="Write",grpc_service="svc.S",grpc_type="client_stream"} 2\n');
    expect(text).toContain('grpc_server_handling_seconds_count{grpc_method="Prepare",grpc_service="svc.S",grpc_type="unary"} 1\n');
    const file = join(tmpdir(), `strata-exposition-${process.pid}.txt`);
    writeFileSync(file, text);
    const check = await run('/bin/sh', ['-c', `promtool check metrics < ${file}`]);
    expect(check.stdout + check.stderr).toBe('');
  });

  it('leaves the histogram out unless grpc_histogram is on (containerd default)', () => {
    const w = new TextWriter();
    new GrpcMetrics(false).write(w);
    expect(w.text()).not.toContain('grpc_server_handling_seconds');
  });
});

describe('listen addresses and config', () => {
  it('parses host:port, [v6]:port and unix paths', () => {
    expect(parseListenAddress('k', '127.0.0.1:1338', false)).toEqual({ host: '127.0.0.1', port: 1338 });
    expect(parseListenAddress('k', '[::1]:9', true)).toEqual({ host: '::1', port: 9 });
    expect(parseListenAddress('k', ':1338', false)).toEqual({ host: '', port: 1338 });
    expect(parseListenAddress('k', '/run/strata/debug.sock', true)).toEqual({ path: '/run/strata/debug.sock' });
    expect(() => parseListenAddress('metrics.address', '/x.sock', false)).toThrow('metrics.address must be host:port, not a unix socket path: /x.sock');
    expect(() => parseListenAddress('k', 'localhost', false)).toThrow('k must be host:port: localhost');
    expect([isLoopback('127.0.0.1'), isLoopback('::1'), isLoopback('localhost'), isLoopback('0.0.0.0'), isLoopback('')]).toEqual([true, true, true, false, false]);
  });

  it('defaults both endpoints off, as containerd', () => {
    const cfg = defaultConfig();
    expect(cfg.metrics).toEqual({ address: '', grpc_histogram: false });
    expect(cfg.debug.address).toBe('');
  });

  it('reads [metrics] and [debug] address, and refuses a debug endpoint beyond loopback', () => {
    const file = join(tmpdir(), `strata-metrics-config-${process.pid}.toml`);
    const load = (toml: string) => {
      writeFileSync(file, `version = 2\n${toml}`);
      return loadConfig(file);
    };
    const cfg = load('[metrics]\naddress = "127.0.0.1:1338"\ngrpc_histogram = true\n[debug]\naddress = "/run/strata/debug.sock"\n');
    expect(cfg.metrics).toEqual({ address: '127.0.0.1:1338', grpc_histogram: true });
    expect(cfg.debug).toEqual({ level: 'info', address: '/run/strata/debug.sock' });
    expect(load('[debug]\naddress = "localhost:6060"\n').debug.address).toBe('localhost:6060');
    expect(() => load('[debug]\naddress = "0.0.0.0:6060"\n')).toThrow(
      'debug.address must be a unix socket or a loopback address (127.0.0.1, ::1, localhost): 0.0.0.0:6060',
    );
    expect(() => load('[metrics]\naddress = "1338"\n')).toThrow('metrics.address must be host:port: 1338');
    expect(() => load('[metrics]\ngrpc_histogram = "yes"\n')).toThrow('config: metrics.grpc_histogram must be a boolean');
  });
});
