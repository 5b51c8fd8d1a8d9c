/**
 * strata debug: fetches profiles from stratad's debug endpoint ([debug] address; a unix socket or a loopback
 * host:port), as `go tool pprof` does from containerd's.
 *
 *   strata debug profile [--seconds N] [-o FILE]   a V8 CPU profile over N seconds (default 30): a .cpuprofile
 *   strata debug heap [-o FILE]                    a V8 heap snapshot: a .heapsnapshot
 *   strata debug state                             the calls in flight and the tasks (what SIGUSR1 logs)
 *
 * Without -o the file is written in the current directory under the name stratad gives it; `-o -` writes to
 * standard output. Open either in Chrome DevTools (Performance or Memory tab) or VS Code.
 */
import { createWriteStream } from 'node:fs';
import { request, type IncomingMessage } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { parseListenAddress } from '../core/address.js';
import { CliError, str, type Command, type Group, type Values } from './command.js';
import { humanSize, write } from './output.js';

export const DEFAULT_DEBUG_ADDRESS = '/run/strata/debug.sock';

const ADDRESS_OPTION = { 'debug-address': { type: 'string' } } as const;

function debugAddress(values: Values): string {
  return str(values, 'debug-address') ?? (process.env.STRATA_DEBUG_ADDRESS || DEFAULT_DEBUG_ADDRESS);
}

/** GET `path` from the debug endpoint; rejects with the endpoint's message on a non-200 answer. */
function get(address: string, path: string): Promise<IncomingMessage> {
  let at;
  try {
    at = parseListenAddress('--debug-address', address, true);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  const target = 'path' in at ? { socketPath: at.path } : { host: at.host, port: at.port };
  return new Promise((resolve, reject) => {
    const req = request({ ...target, path, method: 'GET' }, (res) => {
      if (res.statusCode === 200) return resolve(res);
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => reject(new CliError(`debug endpoint: ${res.statusCode} ${body.trim()}`)));
    });
    req.on('error', (err) => reject(new CliError(`cannot reach stratad's debug endpoint at ${address}: ${err.message}`)));
    req.end();
  });
}

/** The file name stratad suggests (Content-Disposition), or a fallback. */
function suggestedName(res: IncomingMessage, fallback: string): string {
  const m = /filename="([^"/]+)"/.exec(String(res.headers['content-disposition'] ?? ''));
  return m ? m[1]! : fallback;
}

async function save(res: IncomingMessage, out: string | undefined, fallback: string): Promise<void> {
  if (out === '-') {
    await pipeline(res, process.stdout, { end: false });
    return;
  }
  const file = out ?? suggestedName(res, fallback);
  let bytes = 0;
  res.on('data', (b: Buffer) => (bytes += b.length));
  await pipeline(res, createWriteStream(file));
  await write(`wrote ${file} (${humanSize(bytes)})\n`);
}

const profile: Command = {
  name: 'profile',
  summary: 'take a CPU profile of stratad (a .cpuprofile for Chrome DevTools)',
  options: { ...ADDRESS_OPTION, seconds: { type: 'string' }, output: { type: 'string', short: 'o' } },
  async run({ values }) {
    const raw = str(values, 'seconds') ?? '30';
    const seconds = Number(raw);
    if (!Number.isFinite(seconds) || seconds <= 0) throw new CliError(`--seconds must be a positive number: ${raw}`);
    const res = await get(debugAddress(values), `/debug/pprof/profile?seconds=${seconds}`);
    await save(res, str(values, 'output'), 'stratad.cpuprofile');
  },
};

const heap: Command = {
  name: 'heap',
  summary: 'take a heap snapshot of stratad (a .heapsnapshot for Chrome DevTools)',
  options: { ...ADDRESS_OPTION, output: { type: 'string', short: 'o' } },
  async run({ values }) {
    const res = await get(debugAddress(values), '/debug/heap');
    await save(res, str(values, 'output'), 'stratad.heapsnapshot');
  },
};

const state: Command = {
  name: 'state',
  summary: 'print the gRPC calls in flight and the tasks (what SIGUSR1 writes to the log)',
  options: { ...ADDRESS_OPTION },
  async run({ values }) {
    const res = await get(debugAddress(values), '/debug/state');
    await pipeline(res, process.stdout, { end: false });
  },
};

export const debug: Group = {
  name: 'debug',
  summary: 'profile stratad through its debug endpoint ([debug] address)',
  commands: [profile, heap, state],
};
