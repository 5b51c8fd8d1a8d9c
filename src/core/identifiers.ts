/**
 * Identifier rules shared by namespaces and other named objects, as containerd enforces them: alphanumeric
 * runs joined by single '.', '_' or '-', at most 76 characters.
 */
import { invalidArgument } from './errdefs.js';

const MAX_LENGTH = 76;
const identifierPattern = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/;

export function validateIdentifier(s: string): void {
  if (s === '') throw invalidArgument('identifier must not be empty');
  if (s.length > MAX_LENGTH) {
    throw invalidArgument(`identifier "${s}" greater than maximum length (${MAX_LENGTH} characters)`);
  }
  if (!identifierPattern.test(s)) throw invalidArgument(`identifier "${s}" must match ${identifierPattern.source}`);
}
