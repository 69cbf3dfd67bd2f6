"""The gate: every proxy call of a program is decided here before a backend is touched."""

from charter.gate._arguments import ArgumentChecker, InvalidArguments
from charter.gate._passthrough import PassThroughGate
from charter.gate._protocol import CallRequest, Denied, Gate, OperationFailed

__all__ = ["ArgumentChecker", "CallRequest", "Denied", "Gate", "InvalidArguments", "OperationFailed", "PassThroughGate"]
