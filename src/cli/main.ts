/**
 * strata: a ctr-like command line for stratad.
 *
 *   strata [--address SOCK] [--namespace NS] [--json] <group> <command> [args]
 *
 * Global options may also come after the group or the command. Errors print "strata: <message>" on stderr and
 * exit with status 1.
 */
import { parseArgs } from 'node:util';
import { STRATA_VERSION } from '../version.js';
import { CliError, parseDuration, Session, str, type Command, type Group, type OptionsConfig, type Values } from './command.js';
import { ENTRY_MODULES } from './entries.js';

export const DEFAULT_ADDRESS = '/run/strata/strata.sock';
const DEFAULT_CONNECT_TIMEOUT = '5s';

const GLOBAL_OPTIONS = {
  address: { type: 'string', short: 'a' },
  namespace: { type: 'string', short: 'n' },
  'connect-timeout': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
} satisfies OptionsConfig;

/** Global options that take a value as the next argument (needed to find the group and command names). */
// Options that take a value and may come before the command name (the scan must skip their value).
const VALUE_FLAGS = new Set(['--address', '-a', '--namespace', '-n', '--connect-timeout', '--snapshotter', '--platform', '--user', '-u', '--hosts-dir']);

/** The command or group named (by name or alias), loaded; undefined if there is none. */
async function loadEntry(name: string): Promise<Group | Command | undefined> {
  const m = ENTRY_MODULES.find((e) => e.names.includes(name));
  if (!m) return undefined;
  const e = await m.load();
  if (e.name !== name && !e.aliases?.includes(name)) throw new Error(`strata: command table out of step with ${e.name}`);
  return e;
}

const isGroup = (e: Group | Command): e is Group => 'commands' in e;

function find<T extends { name: string; aliases?: string[] }>(list: T[], name: string): T | undefined {
  return list.find((e) => e.name === name || e.aliases?.includes(name));
}

const names = (e: { name: string; aliases?: string[] }) => [e.name, ...(e.aliases ?? [])].join(', ');

async function topHelp(): Promise<string> {
  const entries = await Promise.all(ENTRY_MODULES.map((m) => m.load()));
  const { FSCK_SUMMARY } = await import('./fsck.js');
  const rows = entries.map((e) => `  ${names(e).padEnd(32)}${e.summary}`);
  return [
    'usage: strata [global options] <command> [<subcommand>] [options] [args]',
    '',
    'commands:',
    ...rows,
    `  ${'fsck'.padEnd(32)}${FSCK_SUMMARY} (offline: strata fsck --help)`,
    '',
    'global options:',
    `  -a, --address <socket>        stratad's socket (env STRATA_ADDRESS, default ${DEFAULT_ADDRESS})`,
    '  -n, --namespace <name>        namespace (env STRATA_NAMESPACE or CONTAINERD_NAMESPACE, default "default")',
    `      --connect-timeout <dur>   how long to wait for stratad to answer (default ${DEFAULT_CONNECT_TIMEOUT})`,
    '      --json                    print listings as JSON',
    '  -h, --help                    show help',
    '  -v, --version                 print the client version',
    '',
  ].join('\n');
}

function groupHelp(g: Group): string {
  const rows = g.commands.map((c) => `  ${names(c).padEnd(32)}${c.summary}`);
  return [`usage: strata ${g.name} <command> [options] [args]`, '', `${g.summary}`, '', 'commands:', ...rows, ''].join('\n');
}

function commandHelp(path: string, c: Command): string {
  const opts = Object.entries(c.options ?? {}).map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${name}${o.type === 'string' ? ' <value>' : ''}`;
    return `  ${flag}`;
  });
  return [
    `usage: strata ${path}${opts.length > 0 ? ' [options]' : ''}${c.usage ? ` ${c.usage}` : ''}`,
    '',
    c.summary,
    ...(opts.length > 0 ? ['', 'options:', ...opts] : []),
    '',
  ].join('\n');
}

/**
 * For a command with `argsAfter: n`, inserts `--` after its n-th positional argument so that parseArgs leaves
 * the rest alone (node's parseArgs reads options anywhere on the line; ctr stops at the command's arguments).
 */
function endOptionsAfter(args: string[], command: Command | undefined): string[] {
  const n = command?.argsAfter;
  if (n === undefined) return args;
  const takesValue = (a: string): boolean => {
    const all: OptionsConfig = { ...GLOBAL_OPTIONS, ...command!.options };
    if (a.startsWith('--')) return !a.includes('=') && all[a.slice(2)]?.type === 'string';
    return Object.values(all).some((o) => o.short === a.slice(1) && o.type === 'string');
  };
  let seen = 0;
  for (let k = 0; k < args.length; k++) {
    const a = args[k]!;
    if (a === '--') return args;
    if (a.startsWith('-') && a !== '-') {
      if (takesValue(a)) k++;
      continue;
    }
    if (++seen === n) return k + 1 < args.length && args[k + 1] !== '--' ? [...args.slice(0, k + 1), '--', ...args.slice(k + 1)] : args;
  }
  return args;
}

/** Runs one command line; resolves to the exit status. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  // fsck runs offline (no daemon, no session) with its own options and exit statuses (0, 1, 2).
  const at = argv.findIndex((a, k) => !a.startsWith('-') && !(k > 0 && VALUE_FLAGS.has(argv[k - 1]!)));
  if (at >= 0 && argv[at] === 'fsck') return (await import('./fsck.js')).fsckMain([...argv.slice(0, at), ...argv.slice(at + 1)]);
  // Find the group and command names, leaving every option (global or not) for parseArgs.
  let entry: Group | Command | undefined;
  let command: Command | undefined;
  const options: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a.startsWith('-') && a !== '-') {
      options.push(a);
      if (VALUE_FLAGS.has(a) && i + 1 < argv.length) options.push(argv[++i]!);
      continue;
    }
    if (!entry) {
      entry = await loadEntry(a);
      if (!entry) throw new CliError(`unknown command "${a}" (see strata --help)`);
      if (!isGroup(entry)) {
        command = entry;
        i++;
        break;
      }
      continue;
    }
    if (isGroup(entry)) command = find(entry.commands, a);
    if (!command) throw new CliError(`unknown command "${entry.name} ${a}" (see strata ${entry.name} --help)`);
    i++;
    break;
  }
  const rest = endOptionsAfter([...options, ...argv.slice(i)], command);

  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({
      args: rest,
      options: { ...GLOBAL_OPTIONS, ...command?.options },
      allowPositionals: true,
      strict: true,
    }) as { values: Values; positionals: string[] };
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  const { values, positionals } = parsed;

  if (values.version === true && !entry) {
    process.stdout.write(`strata ${STRATA_VERSION}\n`);
    return 0;
  }
  if (!entry || values.help === true || (isGroup(entry) && !command)) {
    const path = entry && command && isGroup(entry) ? `${entry.name} ${command.name}` : command?.name;
    process.stdout.write(command ? commandHelp(path!, command) : entry && isGroup(entry) ? groupHelp(entry) : await topHelp());
    return 0;
  }
  if (!command) return 0;

  const session = new Session({
    address: str(values, 'address') ?? (env.STRATA_ADDRESS || DEFAULT_ADDRESS),
    namespace: str(values, 'namespace') ?? (env.STRATA_NAMESPACE || env.CONTAINERD_NAMESPACE || 'default'),
    connectTimeoutMs: parseDuration(str(values, 'connect-timeout') ?? DEFAULT_CONNECT_TIMEOUT),
    json: values.json === true,
  });
  try {
    return (await command.run({ args: positionals, values, session })) ?? 0;
  } finally {
    session.close();
  }
}

// A reader that went away (`strata content get ... | head`) is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  process.stderr.write(`strata: ${err.message}\n`);
  process.exit(1);
});

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`strata: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}
