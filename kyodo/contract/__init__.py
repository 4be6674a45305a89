"""What a contract author imports: the contract SDK, and nothing else.

    from kyodo.contract import Context, Contract, ContractError, function

This is the only module (with ``typing.Any``) that deployed contract code may
import; the sandbox hands contracts these very objects. See docs/contracts.md.
"""

from kyodo.contracts import Caller, Context, Contract, ContractError, function, sha256_hex

__all__ = ["Caller", "Context", "Contract", "ContractError", "function", "sha256_hex"]
