"""`connect(address, api_key)`: a channel to the gateway whose calls carry the key and raise
`ZentraError`, with a stub per public service."""

from __future__ import annotations

import time
from typing import Iterator, Optional

import grpc

from zentra.inventory.v1 import inventory_pb2_grpc
from zentra.order.v1 import order_pb2_grpc
from zentra.saga.v1 import saga_pb2, saga_pb2_grpc

from .errors import ZentraError

#: Saga states after which nothing more happens to the saga on its own.
ENDED = frozenset(
    {
        saga_pb2.SAGA_STATE_COMPLETED,
        saga_pb2.SAGA_STATE_COMPENSATED,
        saga_pb2.SAGA_STATE_COMPENSATION_FAILED,
    }
)


class _Details(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _Stream:
    """A server stream whose failures are raised as `ZentraError`; otherwise the call itself."""

    def __init__(self, call) -> None:
        self._call = call

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self):
        try:
            return next(self._call)
        except grpc.RpcError as error:
            raise ZentraError.from_rpc_error(error) from None

    def __getattr__(self, name):
        return getattr(self._call, name)


class _Future:
    """A call made with `.future()`: its failure is raised (and returned) as `ZentraError`."""

    def __init__(self, call) -> None:
        self._call = call

    def result(self, timeout=None):
        try:
            return self._call.result(timeout)
        except grpc.RpcError as error:
            raise ZentraError.from_rpc_error(error) from None

    def exception(self, timeout=None):
        error = self._call.exception(timeout)
        return ZentraError.from_rpc_error(error) if error is not None else None

    def __getattr__(self, name):
        return getattr(self._call, name)


class _Platform(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the API key to every call and turns failures into `ZentraError`."""

    def __init__(self, api_key: str) -> None:
        self._key = ("x-api-key", api_key)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(details, [*(details.metadata or ()), self._key])

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(self._details(details), request)
        if not outcome.done():
            # `.future()`: still running; the error is converted when it is asked for.
            return _Future(outcome)
        error = outcome.exception()
        if error is not None:
            raise ZentraError.from_rpc_error(error) from None
        return outcome

    def intercept_unary_stream(self, continuation, details, request):
        return _Stream(continuation(self._details(details), request))


class Client:
    """The gateway's public services: `orders`, `inventory` and `sagas` (generated stubs)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.orders = order_pb2_grpc.OrderServiceStub(channel)
        self.inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        self.sagas = saga_pb2_grpc.SagaServiceStub(channel)

    def follow_order(self, order_id: str, timeout: float = 120.0) -> Iterator[saga_pb2.Saga]:
        """Yields the order's saga at every change until it has ended (COMPLETED, COMPENSATED,
        or COMPENSATION_FAILED). Waits for the saga to start, and watches again if the stream
        breaks; raises `TimeoutError` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        pause = 0.2
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the saga of order {order_id} did not end in {timeout:g} s")
            try:
                request = saga_pb2.WatchSagaRequest(order_id=order_id)
                for update in self.sagas.WatchSaga(request, timeout=left):
                    pause = 0.2
                    yield update.saga
                    if update.saga.state in ENDED:
                        return
                # The stream ended before the saga did (its server is stopping): watch again.
                wait = pause
            except ZentraError as error:
                # NOT_FOUND until the saga has started; UNAVAILABLE while a service restarts.
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() >= deadline:
                    continue
                if error.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
                wait = error.retry_delay or pause
            time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 2.0)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def connect(
    address: str,
    api_key: str,
    *,
    root_certificates: Optional[bytes] = None,
) -> Client:
    """A client of the gateway at `address` ("127.0.0.1:8080", an "http://" or "https://" URL, or
    any gRPC target such as "dns:///gateway:8080"), calling with `api_key`. TLS when the address says https or certificates are
    given."""
    secure = address.startswith("https://") or root_certificates is not None
    target = address
    for scheme in ("http://", "https://"):
        if target.startswith(scheme):
            target = target[len(scheme) :].rstrip("/")
    if secure:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
    else:
        channel = grpc.insecure_channel(target)
    return Client(grpc.intercept_channel(channel, _Platform(api_key)))
