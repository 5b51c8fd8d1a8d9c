/**
 * What every command group is made of: commands with their own options (parsed with node:util parseArgs
 * together with the global ones), and a session that connects to stratad on first use.
 */
import * as grpc from '@grpc/grpc-js';
import type { ParseArgsConfig } from 'node:util';
import { StrataClient } from '../api/clients/strata.js';

/** Option definitions as node:util parseArgs takes them. */
export type OptionsConfig = NonNullable<ParseArgsConfig['options']>;

export type Values = Record<string, string | boolean | undefined>;

export interface Invocation {
  /** Positional arguments after the command name. */
  args: string[];
  values: Values;
  session: Session;
}

export interface Command {
  name: string;
  aliases?: string[];
  /** Argument synopsis for help, e.g. "<name> [<key>=<value>...]". */
  usage?: string;
  summary: string;
  options?: OptionsConfig;
  /**
   * Options end after this many positional arguments: what follows is the command's own argument list, taken as
   * is (`strata run IMAGE ID sh -c 'exit 3'`, as ctr reads it).
   */
  argsAfter?: number;
  /** Resolves to the exit code (default 0). */
  run(inv: Invocation): Promise<number | void>;
}

export interface Group {
  name: string;
  aliases?: string[];
  summary: string;
  commands: Command[];
}

/** A usage or argument error: printed as "strata: <message>", exit status 1. */
export class CliError extends Error {
  override name = 'CliError';
}

export interface Globals {
  address: string;
  namespace: string;
  connectTimeoutMs: number;
  json: boolean;
}

/** The client of one CLI run, connected lazily so that `strata version` can print its half first. */
export class Session {
  private client?: StrataClient;

  constructor(readonly globals: Globals) {}

  get json(): boolean {
    return this.globals.json;
  }

  async connect(): Promise<StrataClient> {
    if (this.client) return this.client;
    const { address, namespace, connectTimeoutMs } = this.globals;
    const c = new StrataClient(address, { namespace });
    this.client = c;
    await waitConnected(c, connectTimeoutMs);
    return c;
  }

  close(): void {
    this.client?.close();
    this.client = undefined;
  }
}

/**
 * Makes sure stratad answers before any real call: a health check that fails fast when nothing listens on the
 * socket and gives up after the deadline when something listens but does not answer.
 */
function waitConnected(c: StrataClient, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    c.health.check({ service: '' }, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err) => {
      if (!err) return resolve();
      let reason: string;
      if (err.code === grpc.status.UNAVAILABLE) {
        const m = /Last error: (?:Error: )?(.*?)(?:\. Resolution note:.*)?$/s.exec(err.details);
        reason = m ? m[1]! : err.details;
      } else if (err.code === grpc.status.DEADLINE_EXCEEDED) {
        reason = `no answer within ${timeoutMs / 1000}s`;
      } else {
        // It answered (perhaps without a health service): the connection works.
        return resolve();
      }
      reject(new CliError(`cannot connect to stratad at ${c.address}: ${reason}`));
    });
  });
}

// ---- argument helpers ----

export const str = (v: Values, name: string): string | undefined => {
  const x = v[name];
  return typeof x === 'string' ? x : undefined;
};

export const bool = (v: Values, name: string): boolean => v[name] === true;

/** ctr's label arguments: "k=v" sets, "k=" is an empty value (clears on update), a bare "k" means "true". */
export function labelArgs(args: string[], bare = 'true'): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const a of args) {
    const eq = a.indexOf('=');
    if (eq < 0) labels[a] = bare;
    else labels[a.slice(0, eq)] = a.slice(eq + 1);
  }
  return labels;
}

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  'µs': 1e-3,
  'μs': 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/** A Go duration ("24h", "1h30m", "1.5s", "300ms", "0") in milliseconds. */
export function parseDuration(s: string): number {
  const m = /^([-+]?)(.*)$/s.exec(s)!;
  const sign = m[1] === '-' ? -1 : 1;
  let rest = m[2]!;
  if (rest === '0') return 0;
  if (rest === '') throw new CliError(`invalid duration "${s}"`);
  let total = 0;
  while (rest !== '') {
    const part = /^(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/.exec(rest);
    if (!part) throw new CliError(`invalid duration "${s}"`);
    total += Number(part[1]) * UNIT_MS[part[2]!]!;
    rest = rest.slice(part[0].length);
  }
  return sign * total;
}
