/** Shared by the metrics and debug tests. */
import { createServer } from 'node:net';

/** A loopback port nothing listens on now (the kernel's choice, released at once). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}
