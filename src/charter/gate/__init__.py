"""The gate: every proxy call of a program is decided here before a backend is touched.

`ContractGate` enforces a compiled contract and records every decision through the audit
log; `PassThroughGate` checks argument types only (sandbox tests and benchmarks).
"""

from charter.gate._approvals import GrantedApproval
from charter.gate._arguments import ArgumentChecker, InvalidArguments
from charter.gate._contract import ContractGate, GateSession
from charter.gate._passthrough import PassThroughGate
from charter.gate._protocol import (
    ApprovalPending,
    CallRequest,
    Denied,
    Encoded,
    Gate,
    Malformed,
    OperationFailed,
    RunHalted,
    encode_reply,
)

__all__ = [
    "ApprovalPending",
    "ArgumentChecker",
    "CallRequest",
    "ContractGate",
    "Denied",
    "Encoded",
    "Gate",
    "GateSession",
    "GrantedApproval",
    "InvalidArguments",
    "Malformed",
    "OperationFailed",
    "PassThroughGate",
    "RunHalted",
    "encode_reply",
]
