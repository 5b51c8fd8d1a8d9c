/**
 * Clean-up work that a full disk refuses (removing a snapshot record, a lease, a backend directory's bookkeeping:
 * SQLite needs room in its WAL even to delete) is tried again later instead of being left for the next garbage
 * collection: once space is freed, what a failed operation left behind goes within a second or two.
 */
import { isNoSpace } from './errdefs.js';

export const NO_SPACE_RETRY_MS = 1000;
/** Attempts before giving up (the garbage collector still finds what is left). */
export const NO_SPACE_RETRY_ATTEMPTS = 600;

/**
 * Runs `fn`; when it fails for want of space, runs it again every NO_SPACE_RETRY_MS in the background (timers
 * that do not keep the process alive) until it succeeds, fails otherwise, or the attempts run out. Resolves after
 * the first attempt: true if it succeeded, false if it failed (retries may follow). Never rejects.
 */
export async function retryOnNoSpace(fn: () => Promise<unknown>, onGiveUp?: (err: unknown) => void): Promise<boolean> {
  try {
    await fn();
    return true;
  } catch (err) {
    if (!isNoSpace(err)) {
      onGiveUp?.(err);
      return false;
    }
  }
  let attempts = 1;
  const again = () => {
    fn().then(
      () => undefined,
      (err: unknown) => {
        if (isNoSpace(err) && ++attempts < NO_SPACE_RETRY_ATTEMPTS) setTimeout(again, NO_SPACE_RETRY_MS).unref();
        else onGiveUp?.(err);
      },
    );
  };
  setTimeout(again, NO_SPACE_RETRY_MS).unref();
  return false;
}
