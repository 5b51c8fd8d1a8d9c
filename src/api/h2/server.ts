/**
 * Strata's HTTP/2 server for gRPC: listens on a unix socket, speaks h2c with prior knowledge (what gRPC
 * clients send on one), and hands each request stream to `onStream`. The connections are
 * ./connection.ts; graceful shutdown sends each a GOAWAY and waits for its streams to end.
 */
import net from 'node:net';
import { H2Connection, type ConnectionOptions } from './connection.js';

export type { StreamSink } from './connection.js';
export { H2Stream, encodeGrpcMessage } from './connection.js';

export class H2Server {
  private readonly server: net.Server;
  private readonly connections = new Set<H2Connection>();

  constructor(private readonly options: ConnectionOptions) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  /** Serves one connected socket (the listener's; tests hand in their own to drive the transport byte by byte). */
  accept(socket: net.Socket): void {
    const conn = new H2Connection(socket, this.options);
    this.connections.add(conn);
    socket.on('close', () => this.connections.delete(conn));
  }

  listen(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(path, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  /** Stops accepting connections; each open one gets a GOAWAY and closes once its streams are done. */
  close(callback: () => void): void {
    let waiting = this.connections.size + 1;
    const done = () => {
      if (--waiting === 0) callback();
    };
    this.server.close(() => done());
    for (const c of [...this.connections]) c.shutdown(done);
  }

  /** Cuts every connection now. */
  destroy(): void {
    for (const c of this.connections) c.destroy();
    this.connections.clear();
    this.server.close();
  }
}
