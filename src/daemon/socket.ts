/**
 * The daemon's unix socket: a stale file left by a crashed daemon is replaced; a live one (another daemon
 * answering) is an error, so two daemons never share an address.
 */
import { chmodSync, chownSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { alreadyExists, failedPrecondition } from '../core/errdefs.js';
import { socketAnswers } from '../core/socket.js';

export async function prepareSocketPath(path: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o711 });
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw failedPrecondition(`${path} exists and is not a socket`);
  if (await socketAnswers(path)) throw alreadyExists(`another daemon is serving on ${path}`);
  unlinkSync(path);
}

export function secureSocket(path: string, uid: number, gid: number): void {
  chownSync(path, uid, gid);
  chmodSync(path, 0o660);
}
