/** Assertions on Strata's typed errors. */
import { expect } from 'vitest';
import { StrataError } from '../../src/core/errdefs.js';

/** The error kind a promise rejects with (asserting it is a StrataError), or undefined if it resolves. */
export async function kindOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(StrataError);
    return (err as StrataError).kind;
  }
}
