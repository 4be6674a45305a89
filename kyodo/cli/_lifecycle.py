"""Contract lifecycle from the command line: packages, approvals, commits, dev mode.

Every step is a transaction of the ``_lifecycle`` contract, signed by an
organization's admin through a gateway of that organization; nothing here
touches a node's files. On a real network each organization runs ``approve``
with its own admin; on a local network the CLI holds every admin's key, so
``--org`` can repeat (and ``dev`` approves as all of them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kyodo.cli._network import LocalNetwork
from kyodo.client import ContractFailed, KyodoError
from kyodo.codec import encode
from kyodo.contracts import (
    CodeRejectedError,
    ContractPackage,
    PackageError,
    check_source,
    decode_package,
    load_package_class,
    policy_digest,
    specs_of,
)

__all__ = ["Lifecycle", "build_package", "load_package_file", "save_package_file"]

LIFECYCLE = "_lifecycle"


def build_package(
    source_file: Path,
    *,
    name: str | None = None,
    version: str = "1.0.0",
    init_args: Sequence[Any] = (),
    migrate: str = "",
    access: Sequence[str] = ("*",),
    description: str = "",
) -> ContractPackage:
    """A package of ``source_file``; raise CodeRejectedError/PackageError if it may not run."""
    try:
        source = source_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"cannot read {source_file}: {exc}") from exc
    package = ContractPackage(
        name=name or source_file.stem,
        version=version,
        filename=source_file.name,
        source=source,
        init_args=tuple(init_args),
        migrate=migrate,
        access=tuple(access),
        description=description,
    )
    package.check()
    return package


def save_package_file(package: ContractPackage, path: Path) -> None:
    """Write ``package`` (canonical CBOR) to ``path``."""
    path.write_bytes(encode(package))


def load_package_file(path: Path) -> ContractPackage:
    """Read a package written by ``kyodo contract package``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc}") from exc
    return decode_package(data)


class Lifecycle:
    """The ``_lifecycle`` contract of a local network, through its orgs' admins."""

    def __init__(self, network: LocalNetwork) -> None:
        self.network = network

    def _query(self, function: str, *args: Any, org: str | None = None) -> Any:
        with self.network.gateway(org or self.network.orgs[0], "admin") as gw:
            return gw.contract(LIFECYCLE).evaluate(function, *args)

    def _submit(self, org: str, function: str, *args: Any) -> Any:
        self._check_org(org)
        with self.network.gateway(org, "admin") as gw:
            return gw.contract(LIFECYCLE).submit(function, *args)

    def _check_org(self, org: str) -> None:
        if org not in self.network.orgs:
            raise KyodoError(
                f"no organization {org!r}; orgs: {', '.join(self.network.orgs)}", code="not_found"
            )

    def definitions(self) -> list[dict[str, Any]]:
        """Every contract ever deployed."""
        return list(self._query("definitions"))

    def definition(self, name: str) -> dict[str, Any] | None:
        """``name``'s definition, or None if it was never deployed."""
        for found in self.definitions():
            if found["name"] == name:
                return found
        return None

    def next_step(self, package: ContractPackage) -> tuple[int, str]:
        """(sequence, action) that committing ``package`` would be."""
        current = self.definition(package.name)
        if current is None:
            return 1, "deploy"
        if current["status"] == "terminated":
            raise KyodoError(
                f"{package.name} was terminated at sequence {current['sequence']}; "
                "deploy under a new name",
                code="lifecycle",
            )
        return int(current["sequence"]) + 1, "upgrade"

    def approve(self, org: str, package: ContractPackage) -> dict[str, Any]:
        """``org``'s admin approves committing ``package``; the proposal's status."""
        sequence, action = self.next_step(package)
        return dict(
            self._submit(org, "approve", package.name, sequence, action, package.package_hash())
        )

    def approve_termination(self, org: str, name: str) -> dict[str, Any]:
        """``org``'s admin approves terminating ``name``; the proposal's status."""
        current = self.definition(name)
        if current is None or current["status"] != "active":
            raise KyodoError(f"{name} is not an active contract", code="not_found")
        sequence = int(current["sequence"]) + 1
        return dict(
            self._submit(
                org, "approve", name, sequence, "terminate", bytes.fromhex(current["hash"])
            )
        )

    def commit(self, org: str, package: ContractPackage) -> dict[str, Any]:
        """Commit ``package`` (deploy or upgrade) as ``org``'s admin."""
        return dict(self._submit(org, "commit", encode(package)))

    def terminate(self, org: str, name: str) -> dict[str, Any]:
        """Terminate ``name`` as ``org``'s admin."""
        return dict(self._submit(org, "terminate", name))

    def approvals(self, name: str, sequence: int) -> list[dict[str, Any]]:
        """Approvals recorded for ``name`` at ``sequence``."""
        return list(self._query("approvals", name, sequence))

    def policy(self) -> dict[str, Any]:
        """The lifecycle quorum in force."""
        return dict(self._query("policy"))

    def approve_policy(self, org: str, quorum: int) -> dict[str, Any]:
        """``org``'s admin approves setting the lifecycle quorum to ``quorum``."""
        current = self.approvals_sequence("_lifecycle")
        return dict(
            self._submit(org, "approve", "_lifecycle", current + 1, "policy", policy_digest(quorum))
        )

    def set_policy(self, org: str, quorum: int) -> dict[str, Any]:
        """Commit the lifecycle quorum (after approvals by the current quorum)."""
        return dict(self._submit(org, "set_policy", quorum))

    def approvals_sequence(self, name: str) -> int:
        """The sequence ``name`` is at (0 if never changed)."""
        try:
            return int(self._query("definition", name)["sequence"])
        except ContractFailed:
            return 0

    def package(self, package_hash: str) -> ContractPackage:
        """The committed package with this hash."""
        return decode_package(self._query("package", bytes.fromhex(package_hash)))

    def deploy_everywhere(
        self, package: ContractPackage, progress: Callable[[str], None]
    ) -> dict[str, Any]:
        """Approve as every organization's admin, then commit (dev networks)."""
        sequence, action = self.next_step(package)
        for org in self.network.orgs:
            progress(f"{action} {package.name} {package.version}: approval of {org}")
            self._submit(org, "approve", package.name, sequence, action, package.package_hash())
        progress(f"{action} {package.name} {package.version}: commit")
        return self.commit(self.network.orgs[0], package)


def watch_and_upgrade(
    lifecycle: Lifecycle,
    source_file: Path,
    *,
    name: str,
    progress: Callable[[str], None],
    report: Callable[[str], None],
    poll_s: float = 0.3,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Deploy ``source_file``, then upgrade it on every save (state is kept)."""
    generation = 0
    last_text: str | None = None
    while not stop():
        text: str | None
        try:
            text = source_file.read_text()
        except OSError as exc:
            report(f"cannot read {source_file}: {exc}")
            text = last_text
        if text is not None and text != last_text:
            last_text = text
            generation += 1
            violations = check_source(text, source_file.name)
            if violations:
                report(
                    "not deployed, the verifier refused:\n  " + "\n  ".join(map(str, violations))
                )
            else:
                version = f"dev.{int(time.time())}.{generation}"
                try:
                    package = build_package(source_file, name=name, version=version)
                    done = lifecycle.deploy_everywhere(package, progress)
                    report(
                        f"{done['action']}ed {name} {version} (sequence {done['sequence']}), "
                        f"in force from block {done['since_height']}"
                    )
                except (ContractFailed, CodeRejectedError, PackageError) as exc:
                    report(f"not deployed: {exc}")
                except KyodoError as exc:
                    report(f"not deployed: {exc} [{exc.code}]")
        time.sleep(poll_s)  # polling a file: this is the dev loop's pace, not synchronization


def describe_functions(package: ContractPackage) -> list[dict[str, Any]]:
    """The package's functions: name, parameters, read-only, who may call."""
    cls = load_package_class(package)
    rows = []
    for name, spec in sorted(specs_of(cls).items()):
        rows.append(
            {
                "function": name,
                "params": [f"{p}: {t.__name__}" for p, t in spec.params],
                "read_only": spec.read_only,
                "allow": list(spec.allow) if spec.allow is not None else list(package.access),
            }
        )
    return rows


def to_json(value: Any) -> str:
    """``value`` as JSON, bytes as hex."""
    return json.dumps(value, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
