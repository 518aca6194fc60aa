"""Zentra's gateway from Python: `connect(address, api_key)` gives a `Client` with the generated
stubs (`orders`, `inventory`, `sagas`); failed calls raise `ZentraError` with the field
violations and retry delay the platform sent. The messages are in `zentra.<service>.v1`."""

from .client import ENDED, Client, connect
from .errors import FieldViolation, ZentraError

__all__ = ["ENDED", "Client", "FieldViolation", "ZentraError", "connect"]
