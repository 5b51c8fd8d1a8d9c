/**
 * stratad: the Strata daemon.
 *
 *   stratad [--config FILE] [--root DIR] [--state DIR] [--address SOCK] [--log-level LEVEL]
 *   stratad config default     print the built-in configuration
 *   stratad config dump        print the effective configuration (file + flags)
 *   stratad serve-snapshotter --snapshotter NAME --root DIR --address SOCK
 *                              serve one snapshotter alone, as a containerd proxy plugin
 */
import { parseArgs } from 'node:util';
import { loadConfig, defaultConfig, renderConfig, type Config } from '../config/index.js';
import { createLogger, isLogLevel, type Logger, type LogLevel } from '../log/index.js';
import { servePluginSnapshotter } from './serve-snapshotter-plugin.js';
import type { ServedSnapshotter } from './serve-snapshotter.js';
import { StrataError } from '../core/errdefs.js';
import { STRATA_VERSION } from '../version.js';
import { Daemon, pluginDefaults } from './daemon.js';

const usage = `usage: stratad [--config FILE] [--root DIR] [--state DIR] [--address SOCK] [--log-level LEVEL]
       stratad config default | dump [flags]
       stratad serve-snapshotter --snapshotter NAME --root DIR --address SOCK [--config FILE] [--log-level LEVEL]
       stratad --version`;

function fail(msg: string): never {
  process.stderr.write(`stratad: ${msg}\n`);
  process.exit(1);
}

async function main(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        root: { type: 'string' },
        state: { type: 'string' },
        address: { type: 'string', short: 'a' },
        'log-level': { type: 'string', short: 'l' },
        version: { type: 'boolean', short: 'v' },
        snapshotter: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    fail(`${(err as Error).message}\n${usage}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(usage + '\n');
    return;
  }
  if (values.version) {
    process.stdout.write(`stratad ${STRATA_VERSION}\n`);
    return;
  }
  const level = values['log-level'];
  if (level !== undefined && !isLogLevel(level)) fail(`unknown log level ${level}`);

  let config: Config;
  try {
    config = loadConfig(values.config, {
      root: values.root,
      state: values.state,
      address: values.address,
      logLevel: level,
    });
  } catch (err) {
    fail(err instanceof StrataError ? err.detail : String(err));
  }

  const [command, sub] = positionals;
  if (command === 'config') {
    if (sub === 'default') process.stdout.write(renderConfig(defaultConfig(), pluginDefaults()) + '\n');
    else if (sub === 'dump') process.stdout.write(renderConfig(config, pluginDefaults()) + '\n');
    else fail(`unknown config command ${sub ?? '(none)'}: use "default" or "dump"`);
    return;
  }
  if (command === 'serve-snapshotter') {
    if (!values.snapshotter || !values.root || !values.address) {
      fail(`serve-snapshotter needs --snapshotter, --root and --address\n${usage}`);
    }
    const log = createLogger(config.debug.level as LogLevel);
    let served: ServedSnapshotter;
    try {
      served = await servePluginSnapshotter({ snapshotter: values.snapshotter, root: values.root, address: values.address, config, log });
    } catch (err) {
      log.error('failed to start', { error: err instanceof Error ? err.message : String(err) });
      process.exit(1);
    }
    onSignals(log, () => served.stop());
    return;
  }
  if (command !== undefined) fail(`unknown command ${command}\n${usage}`);

  const log = createLogger(config.debug.level as LogLevel);
  let daemon: Daemon;
  try {
    daemon = await Daemon.start(config, log);
  } catch (err) {
    log.error('failed to start', { error: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  }
  onSignals(log, () => daemon.stop());
}

/** SIGTERM/SIGINT stop gracefully; a second signal exits at once. */
function onSignals(log: Logger, stop: () => Promise<void>): void {
  let signals = 0;
  const onSignal = (sig: string) => {
    signals++;
    if (signals > 1) {
      log.warn('second signal: exiting now', { signal: sig });
      process.exit(1);
    }
    log.info('stopping', { signal: sig });
    stop().then(
      () => process.exit(0),
      (err) => {
        log.error('error while stopping', { error: err });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
}

main(process.argv.slice(2)).catch((err) => fail(err instanceof Error ? (err.stack ?? err.message) : String(err)));
