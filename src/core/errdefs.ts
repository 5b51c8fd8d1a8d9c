/**
 * Strata's error family. Every error that crosses a subsystem boundary is a StrataError carrying one of
 * containerd's error kinds; the gRPC layer maps the kind to a status code and clients map it back. The
 * message follows containerd's convention "<detail>: <kind>" so that `ctr` prints what users expect.
 */

/** gRPC status codes used by the kinds (numbers from the gRPC spec; no dependency on grpc-js here). */
export const GrpcCode = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
} as const;

export type ErrorKind =
  | 'unknown'
  | 'invalid argument'
  | 'not found'
  | 'already exists'
  | 'failed precondition'
  | 'unavailable'
  | 'not implemented'
  | 'out of range'
  | 'canceled'
  | 'deadline exceeded'
  | 'permission denied'
  | 'resource exhausted'
  | 'data loss';

const codeOfKind: Record<ErrorKind, number> = {
  unknown: GrpcCode.UNKNOWN,
  'invalid argument': GrpcCode.INVALID_ARGUMENT,
  'not found': GrpcCode.NOT_FOUND,
  'already exists': GrpcCode.ALREADY_EXISTS,
  'failed precondition': GrpcCode.FAILED_PRECONDITION,
  unavailable: GrpcCode.UNAVAILABLE,
  'not implemented': GrpcCode.UNIMPLEMENTED,
  'out of range': GrpcCode.OUT_OF_RANGE,
  canceled: GrpcCode.CANCELLED,
  'deadline exceeded': GrpcCode.DEADLINE_EXCEEDED,
  'permission denied': GrpcCode.PERMISSION_DENIED,
  'resource exhausted': GrpcCode.RESOURCE_EXHAUSTED,
  'data loss': GrpcCode.DATA_LOSS,
};

const kindOfCode = new Map<number, ErrorKind>(
  Object.entries(codeOfKind).map(([k, c]) => [c, k as ErrorKind]),
);

export class StrataError extends Error {
  readonly kind: ErrorKind;
  /** The message without the trailing ": <kind>", for callers that add their own context. */
  readonly detail: string;

  constructor(kind: ErrorKind, detail: string, options?: { cause?: unknown }) {
    super(detail ? `${detail}: ${kind}` : kind, options);
    this.kind = kind;
    this.detail = detail;
    this.name = 'StrataError';
  }

  get grpcCode(): number {
    return codeOfKind[this.kind];
  }

  /** A new error of the same kind with more context in front: "<context>: <detail>: <kind>". */
  wrap(context: string): StrataError {
    return new StrataError(this.kind, `${context}: ${this.detail}`, { cause: this });
  }
}

export const invalidArgument = (detail: string, cause?: unknown) =>
  new StrataError('invalid argument', detail, { cause });
export const notFound = (detail: string, cause?: unknown) => new StrataError('not found', detail, { cause });
export const alreadyExists = (detail: string, cause?: unknown) =>
  new StrataError('already exists', detail, { cause });
export const failedPrecondition = (detail: string, cause?: unknown) =>
  new StrataError('failed precondition', detail, { cause });
export const unavailable = (detail: string, cause?: unknown) => new StrataError('unavailable', detail, { cause });
export const notImplemented = (detail: string, cause?: unknown) =>
  new StrataError('not implemented', detail, { cause });
export const outOfRange = (detail: string, cause?: unknown) => new StrataError('out of range', detail, { cause });
export const unknown = (detail: string, cause?: unknown) => new StrataError('unknown', detail, { cause });
export const resourceExhausted = (detail: string, cause?: unknown) =>
  new StrataError('resource exhausted', detail, { cause });

/** Bytes that do not match their digest (a verified chunk, a TOC): never handed on. */
export const dataLoss = (detail: string, cause?: unknown) => new StrataError('data loss', detail, { cause });

export const isKind = (err: unknown, kind: ErrorKind): boolean => err instanceof StrataError && err.kind === kind;
export const isNotFound = (err: unknown) => isKind(err, 'not found');
export const isAlreadyExists = (err: unknown) => isKind(err, 'already exists');
export const isInvalidArgument = (err: unknown) => isKind(err, 'invalid argument');
export const isFailedPrecondition = (err: unknown) => isKind(err, 'failed precondition');
export const isUnavailable = (err: unknown) => isKind(err, 'unavailable');
export const isResourceExhausted = (err: unknown) => isKind(err, 'resource exhausted');
export const isDataLoss = (err: unknown) => isKind(err, 'data loss');

/**
 * The codes that mean the disk is full: a file call's ENOSPC, a quota's EDQUOT, and SQLite's SQLITE_FULL (the
 * code better-sqlite3 puts on its error when a write to the database or its WAL fails for want of space).
 * containerd's errdefs call this kind "resource exhausted" (gRPC RESOURCE_EXHAUSTED).
 */
const NO_SPACE_CODES = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL']);

/**
 * The no-space code of an error or of one of its causes (a store that wrapped the file error in its own
 * message keeps it as the cause), else undefined.
 */
export function noSpaceCode(err: unknown): string | undefined {
  let e: unknown = err;
  for (let depth = 0; depth < 8 && typeof e === 'object' && e !== null; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && NO_SPACE_CODES.has(code)) return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Whether an error (or one of its causes) says the disk or a quota is full. */
export const isNoSpace = (err: unknown): boolean => noSpaceCode(err) !== undefined;

/** The gRPC code for any thrown value: StrataErrors by kind, everything else UNKNOWN. */
export function grpcCodeOf(err: unknown): number {
  return err instanceof StrataError ? err.grpcCode : GrpcCode.UNKNOWN;
}

/** Client side: turn a gRPC status (code + details) back into a StrataError of the matching kind. */
export function fromGrpcStatus(code: number, details: string): StrataError {
  const kind = kindOfCode.get(code) ?? 'unknown';
  const suffix = `: ${kind}`;
  const detail = details.endsWith(suffix) ? details.slice(0, -suffix.length) : details;
  return new StrataError(kind, detail);
}
