// Typed errors: a failed call throws ZentraError, which carries the gRPC code and the
// google.rpc details the platform attaches (which fields were wrong, when to retry).
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";

/** One invalid field of a request: its path (for example `lines[0].quantity`) and why. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A call the platform refused or could not serve. */
export class ZentraError extends Error {
  /** The gRPC status code. */
  readonly code: Code;
  /** The status message. */
  readonly rawMessage: string;
  /** google.rpc.BadRequest: every invalid field. */
  readonly fieldViolations: FieldViolation[];
  /** google.rpc.RetryInfo: how long to wait before trying again, in milliseconds. */
  readonly retryDelayMs: number | undefined;
  /** The error as connect-es raised it. */
  readonly cause: ConnectError;

  constructor(cause: ConnectError) {
    const violations: FieldViolation[] = [];
    let retryDelayMs: number | undefined;
    for (const detail of cause.details) {
      if (!("type" in detail)) continue;
      if (detail.type === "google.rpc.BadRequest") {
        violations.push(...badRequest(detail.value));
      } else if (detail.type === "google.rpc.RetryInfo") {
        retryDelayMs = retryInfo(detail.value);
      }
    }
    const lines = violations.map((v) => `\n  ${v.field}: ${v.description}`).join("");
    super(`${Code[cause.code]}: ${cause.rawMessage}${lines}`);
    this.name = "ZentraError";
    this.code = cause.code;
    this.rawMessage = cause.rawMessage;
    this.fieldViolations = violations;
    this.retryDelayMs = retryDelayMs;
    this.cause = cause;
  }

  /** Any thrown value as a ZentraError when it is a failed call; anything else unchanged. */
  static from(error: unknown): unknown {
    if (error instanceof ZentraError) return error;
    if (error instanceof ConnectError) return new ZentraError(error);
    return error;
  }
}

// google.rpc.BadRequest { repeated FieldViolation field_violations = 1; }
// FieldViolation { string field = 1; string description = 2; }
function badRequest(bytes: Uint8Array): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field !== 1) {
      reader.skip(wireType);
      continue;
    }
    const violation = new BinaryReader(reader.bytes());
    const parsed: FieldViolation = { field: "", description: "" };
    while (violation.pos < violation.len) {
      const [inner, innerType] = violation.tag();
      if (inner === 1) parsed.field = violation.string();
      else if (inner === 2) parsed.description = violation.string();
      else violation.skip(innerType);
    }
    violations.push(parsed);
  }
  return violations;
}

// google.rpc.RetryInfo { google.protobuf.Duration retry_delay = 1; }
// Duration { int64 seconds = 1; int32 nanos = 2; }
function retryInfo(bytes: Uint8Array): number {
  let millis = 0;
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field !== 1) {
      reader.skip(wireType);
      continue;
    }
    const duration = new BinaryReader(reader.bytes());
    while (duration.pos < duration.len) {
      const [inner, innerType] = duration.tag();
      if (inner === 1) millis += Number(duration.int64()) * 1000;
      else if (inner === 2) millis += duration.int32() / 1e6;
      else duration.skip(innerType);
    }
  }
  return millis;
}
