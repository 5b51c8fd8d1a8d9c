/** Tars for tests, written with tar-stream from raw headers (so hostile or unusual archives can be made too). */
import { pack, type Header } from 'tar-stream';

/** 2000-01-01T00:00:00Z: the mtime of every entry that sets none (and the test images' `created`). */
export const FIXED_MTIME = new Date(946684800 * 1000);

/** One entry: tar-stream's header fields (a name at least), its body (default empty) and extra PAX records. */
export type TarEntry = Partial<Header> & { name: string; body?: string | Buffer; pax?: Record<string, string> };

/** A whole tar of the entries, in order, owned by root:root with no user or group names unless they say otherwise. */
export async function makeTar(entries: TarEntry[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const c of p) chunks.push(Buffer.from(c as Uint8Array));
  })();
  for (const { body, ...h } of entries) {
    await new Promise<void>((resolve, reject) =>
      p.entry(
        { mtime: FIXED_MTIME, uid: 0, gid: 0, uname: '', gname: '', ...h } as Header,
        body ?? '',
        (err) => (err ? reject(err) : resolve()),
      ),
    );
  }
  p.finalize();
  await collected;
  return Buffer.concat(chunks);
}
