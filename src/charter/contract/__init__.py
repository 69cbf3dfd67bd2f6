"""The contract language: model, loader, checker, types and CEL guards."""

from charter.contract.checker import CheckedContract, check_contract_data, load_contract
from charter.contract.model import Contract, SemVer
from charter.contract.types import TypeRef

__all__ = [
    "CheckedContract",
    "Contract",
    "SemVer",
    "TypeRef",
    "check_contract_data",
    "load_contract",
]
