/**
 * Whether something answers on a unix socket: the one probe behind "a daemon already serves this address"
 * (stratad's socket), "a daemon serves this root" (fsck) and "the root's lazyfs is running" (stargz).
 */
import { connect } from 'node:net';

/** Connects once and hangs up: true when a listener accepted within `timeoutMs`. */
export function socketAnswers(path: string, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const timer = setTimeout(() => {
      s.destroy();
      resolve(false);
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.destroy();
      resolve(true);
    });
    s.once('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}
