/**
 * Structured logging: one JSON object per line on stderr (or a chosen stream), with a level, a message and
 * fields. Child loggers carry fields such as the plugin id or the gRPC method.
 */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';
const order: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

export const isLogLevel = (s: string): s is LogLevel => s in order;

export type Fields = Record<string, unknown>;

export interface Logger {
  level: LogLevel;
  enabled(level: LogLevel): boolean;
  child(fields: Fields): Logger;
  trace(msg: string, fields?: Fields): void;
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
}

interface Sink {
  write(line: string): unknown;
}

function serialize(value: unknown): unknown {
  if (value instanceof Error) return value.message;
  if (typeof value === 'bigint') return value.toString();
  return value;
}

class JsonLogger implements Logger {
  constructor(
    private readonly state: { level: LogLevel; sink: Sink },
    private readonly base: Fields,
  ) {}

  get level(): LogLevel {
    return this.state.level;
  }
  set level(l: LogLevel) {
    this.state.level = l;
  }

  enabled(level: LogLevel): boolean {
    return order[level] >= order[this.state.level];
  }

  child(fields: Fields): Logger {
    return new JsonLogger(this.state, { ...this.base, ...fields });
  }

  private log(level: LogLevel, msg: string, fields?: Fields): void {
    if (!this.enabled(level)) return;
    const rec: Fields = { time: new Date().toISOString(), level, msg };
    for (const [k, v] of Object.entries(this.base)) rec[k] = serialize(v);
    if (fields) for (const [k, v] of Object.entries(fields)) rec[k] = serialize(v);
    this.state.sink.write(JSON.stringify(rec) + '\n');
  }

  trace(msg: string, fields?: Fields) {
    this.log('trace', msg, fields);
  }
  debug(msg: string, fields?: Fields) {
    this.log('debug', msg, fields);
  }
  info(msg: string, fields?: Fields) {
    this.log('info', msg, fields);
  }
  warn(msg: string, fields?: Fields) {
    this.log('warn', msg, fields);
  }
  error(msg: string, fields?: Fields) {
    this.log('error', msg, fields);
  }
}

export function createLogger(level: LogLevel = 'info', sink: Sink = process.stderr): Logger {
  return new JsonLogger({ level, sink }, {});
}

/** A logger that drops everything; for library use and tests that do not care. */
export const silentLogger: Logger = createLogger('fatal', { write: () => undefined });
