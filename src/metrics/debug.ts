/**
 * The debug endpoint on [debug] address (containerd serves Go's pprof there): for a Node daemon,
 *
 *   GET /debug/pprof/profile?seconds=N   a V8 CPU profile over N seconds (default 30), a .cpuprofile (JSON)
 *   GET /debug/heap                      a V8 heap snapshot, a .heapsnapshot (JSON)
 *   GET /debug/state                     the SIGUSR1 dump (calls in flight and tasks) as JSON
 *
 * Both artefacts open in Chrome DevTools (Performance / Memory) or VS Code. One CPU profile at a time: V8 has one
 * profiler per isolate, so a second request while one runs is answered 409.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Session } from 'node:inspector';
import { getHeapSnapshot } from 'node:v8';
import { pipeline } from 'node:stream/promises';
import type { Logger } from '../log/index.js';
import { closeServer, listen } from './listen.js';
import type { ListenAddress } from '../core/address.js';

/** The longest profile one request may ask for. */
export const MAX_PROFILE_SECONDS = 600;
export const DEFAULT_PROFILE_SECONDS = 30;

function post<T>(session: Session, method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) =>
    session.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res as T))),
  );
}

/** Profiles this thread's JavaScript for `ms` milliseconds; resolves to the .cpuprofile object. */
export async function cpuProfile(ms: number, signal?: AbortSignal): Promise<unknown> {
  const session = new Session();
  session.connect();
  try {
    await post(session, 'Profiler.enable');
    await post(session, 'Profiler.start');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal?.addEventListener('abort', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    const { profile } = await post<{ profile: unknown }>(session, 'Profiler.stop');
    return profile;
  } finally {
    session.disconnect();
  }
}

function fail(res: ServerResponse, code: number, message: string): void {
  res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`${message}\n`);
}

const stamp = () => new Date().toISOString().replace(/[:.]/g, '-');

export class DebugServer {
  private profiling = false;

  private constructor(
    private readonly server: Server,
    private readonly log: Logger,
  ) {}

  /** @param state the SIGUSR1 dump's content, for GET /debug/state. */
  static async start(at: ListenAddress, log: Logger, state: () => unknown): Promise<DebugServer> {
    let self: DebugServer | undefined;
    const server = createServer((req, res) => {
      self!.handle(req, res, state).catch((err) => {
        log.warn('debug request failed', { url: req.url, error: err instanceof Error ? err.message : String(err) });
        if (!res.headersSent) fail(res, 500, String(err instanceof Error ? err.message : err));
        else res.destroy();
      });
    });
    self = new DebugServer(server, log);
    await listen(server, at);
    return self;
  }

  private async handle(req: IncomingMessage, res: ServerResponse, state: () => unknown): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://debug');
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(res, 405, 'only GET');
    switch (url.pathname) {
      case '/debug/pprof/profile': {
        const raw = url.searchParams.get('seconds');
        const seconds = raw === null ? DEFAULT_PROFILE_SECONDS : Number(raw);
        if (!Number.isFinite(seconds) || seconds <= 0 || seconds > MAX_PROFILE_SECONDS) {
          return fail(res, 400, `seconds must be a number above 0 and at most ${MAX_PROFILE_SECONDS}`);
        }
        if (this.profiling) return fail(res, 409, 'a CPU profile is already being taken');
        this.profiling = true;
        // A client that gives up ends the profile early (nothing to send it to).
        const abort = new AbortController();
        res.once('close', () => abort.abort());
        try {
          this.log.info('cpu profile', { seconds });
          const profile = await cpuProfile(seconds * 1000, abort.signal);
          if (abort.signal.aborted) return;
          res.writeHead(200, {
            'Content-Type': 'application/json',
            'Content-Disposition': `attachment; filename="stratad-${stamp()}.cpuprofile"`,
          });
          res.end(JSON.stringify(profile));
        } finally {
          this.profiling = false;
        }
        return;
      }
      case '/debug/heap': {
        this.log.info('heap snapshot');
        // The snapshot is taken (the event loop stops meanwhile) and then streamed as V8 serialises it.
        const snapshot = getHeapSnapshot();
        res.writeHead(200, {
          'Content-Type': 'application/json',
          'Content-Disposition': `attachment; filename="stratad-${stamp()}.heapsnapshot"`,
        });
        await pipeline(snapshot, res);
        return;
      }
      case '/debug/state':
        res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(state(), null, 2) + '\n');
        return;
      case '/debug/pprof/':
      case '/debug/':
        res
          .writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' })
          .end('/debug/pprof/profile?seconds=N  CPU profile (.cpuprofile)\n/debug/heap                     heap snapshot (.heapsnapshot)\n/debug/state                    calls in flight and tasks\n');
        return;
      default:
        return fail(res, 404, 'not found');
    }
  }

  close(): Promise<void> {
    return closeServer(this.server);
  }
}
