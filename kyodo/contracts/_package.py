"""A contract package: the code and the metadata organizations approve, by hash.

A package's identity is the SHA-256 of its canonical encoding: code, version,
init arguments and access rules together. Approving a hash approves exactly that
content; changing one byte makes a different package that needs its own
approvals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kyodo.codec import CodecError, decode_record, encode, record
from kyodo.contracts._sandbox import DEFAULT_LIMITS, check_source
from kyodo.contracts._sdk import check_rule
from kyodo.contracts.errors import ArgumentError, CodeRejectedError, PackageError
from kyodo.crypto import sha256

__all__ = ["MAX_PACKAGE_BYTES", "ContractPackage", "decode_package", "package_hash"]

MAX_PACKAGE_BYTES = 240 * 1024
"""A package is kept in the ledger's state, whose values are at most 256 KiB."""

CONTRACT_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_NAME = CONTRACT_NAME
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}")


@record(70)
@dataclass(frozen=True, slots=True, kw_only=True)
class ContractPackage:
    """What organizations approve and a commit deploys."""

    name: str
    """The contract's name and state namespace: lowercase letters, digits, ``_``."""
    version: str
    """The author's version label (e.g. ``1.2.0``); informative, ordering is by sequence."""
    filename: str
    """The source file's name, used in error messages (``payments.py``)."""
    source: str
    """The contract's Python source: one module defining one Contract subclass."""
    init_args: tuple[Any, ...] = ()
    """Arguments of the contract's ``init`` function, run once when first deployed."""
    migrate: str = ""
    """Name of a function run once, in the upgrade's transaction, when this package
    replaces an earlier version ("" for none)."""
    access: tuple[str, ...] = field(default=("*",))
    """Who may call functions that declare no ``allow`` rules (``org.role``)."""
    description: str = ""

    def package_hash(self) -> bytes:
        """The package's identity: SHA-256 of its canonical encoding."""
        return package_hash(encode(self))

    def check(self) -> None:
        """Raise PackageError or CodeRejectedError unless the package may be deployed."""
        if not _NAME.fullmatch(self.name):
            raise PackageError(
                f"contract name {self.name!r}: 1-48 of a-z, 0-9 and _, starting with a letter"
            )
        if not _VERSION.fullmatch(self.version):
            raise PackageError(f"version {self.version!r}: 1-32 of letters, digits, . + _ -")
        if self.migrate and not _NAME.fullmatch(self.migrate):
            raise PackageError(f"migration function {self.migrate!r} is not a valid name")
        try:
            for rule in self.access:
                check_rule(rule)
        except ArgumentError as exc:
            raise PackageError(str(exc)) from exc
        size = len(encode(self))
        if size > MAX_PACKAGE_BYTES:
            raise PackageError(f"package is {size} bytes, over {MAX_PACKAGE_BYTES}")
        violations = check_source(self.source, self.filename, DEFAULT_LIMITS)
        if violations:
            raise CodeRejectedError(self.filename, tuple(str(v) for v in violations))


def package_hash(encoded: bytes) -> bytes:
    """SHA-256 of an encoded package."""
    return sha256(encoded)


def decode_package(data: bytes) -> ContractPackage:
    """Decode a package; raise PackageError if it is not one."""
    if len(data) > MAX_PACKAGE_BYTES:
        raise PackageError(f"package is {len(data)} bytes, over {MAX_PACKAGE_BYTES}")
    try:
        return decode_record(ContractPackage, data)
    except CodecError as exc:
        raise PackageError(f"not a contract package: {exc}") from exc
