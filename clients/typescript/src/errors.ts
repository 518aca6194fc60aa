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

/** Calls `read` for each field of an encoded message; a field it does not take is skipped. */
function readFields(bytes: Uint8Array, read: (field: number, reader: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (!read(field, reader)) reader.skip(wireType);
  }
}

// google.rpc.BadRequest { repeated FieldViolation field_violations = 1; }
// FieldViolation { string field = 1; string description = 2; }
function badRequest(bytes: Uint8Array): FieldViolation[] {
  const violations: FieldViolation[] = [];
  readFields(bytes, (field, reader) => {
    if (field !== 1) return false;
    const violation: FieldViolation = { field: "", description: "" };
    readFields(reader.bytes(), (inner, fields) => {
      if (inner === 1) violation.field = fields.string();
      else if (inner === 2) violation.description = fields.string();
      else return false;
      return true;
    });
    violations.push(violation);
    return true;
  });
  return violations;
}

// google.rpc.RetryInfo { google.protobuf.Duration retry_delay = 1; }
// Duration { int64 seconds = 1; int32 nanos = 2; }
function retryInfo(bytes: Uint8Array): number {
  let millis = 0;
  readFields(bytes, (field, reader) => {
    if (field !== 1) return false;
    readFields(reader.bytes(), (inner, duration) => {
      if (inner === 1) millis += Number(duration.int64()) * 1000;
      else if (inner === 2) millis += duration.int32() / 1e6;
      else return false;
      return true;
    });
    return true;
  });
  return millis;
}
