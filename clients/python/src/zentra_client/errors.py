"""Typed errors: a failed call raises `ZentraError`, which carries the gRPC status and the
`google.rpc` details the platform attaches (which fields were wrong, when to retry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: its path (for example `lines[0].quantity`) and why."""

    field: str
    description: str


class ZentraError(grpc.RpcError):
    """A call the platform refused or could not serve. Still a `grpc.RpcError` with `code()`,
    `details()` and `trailing_metadata()`, so code that handles those keeps working; adds
    `field_violations` (from `google.rpc.BadRequest`) and `retry_delay` (seconds, from
    `google.rpc.RetryInfo`, or None)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: Sequence[FieldViolation] = (),
        retry_delay: Optional[float] = None,
        trailers: tuple = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self._code = code
        self._message = message
        self._trailers = tuple(trailers)
        self.field_violations = tuple(field_violations)
        self.retry_delay = retry_delay

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The status message."""
        return self._message

    def trailing_metadata(self) -> tuple:
        """The call's trailers, as grpc gave them."""
        return self._trailers

    def __reduce__(self):
        return (
            type(self),
            (self._code, self._message, self.field_violations, self.retry_delay, self._trailers),
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "ZentraError":
        """Reads the status and its details from a failed call."""
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        message = error.details() if callable(getattr(error, "details", None)) else str(error)
        trailers = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
        violations: list[FieldViolation] = []
        retry_delay: Optional[float] = None
        for key, value in trailers or ():
            if key != _DETAILS_KEY:
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations.extend(
                        FieldViolation(v.field, v.description) for v in bad.field_violations
                    )
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    retry_delay = info.retry_delay.ToTimedelta().total_seconds()
        return cls(
            code or grpc.StatusCode.UNKNOWN,
            message or "",
            violations,
            retry_delay,
            tuple(trailers or ()),
        )

    def __str__(self) -> str:
        text = f"{self._code.name}: {self._message}"
        for violation in self.field_violations:
            text += f"\n  {violation.field}: {violation.description}"
        if self.retry_delay is not None:
            text += f"\n  retry after {self.retry_delay:g} s"
        return text
