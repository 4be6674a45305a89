"""``kyodo ca``: an organization's certificate authority on a local network.

Creates an organization's CA (``init``: a root, optionally with an intermediate
that issues, so the root key can go offline), issues member certificates
(role in the certificate) and revokes them. A
revocation is a new CRL of the organization, signed by its CA and carried in
the network configuration by a change approved under the admin policy: every
node refuses the revoked certificates from the height it is in force.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from cryptography.x509.oid import NameOID
from rich.table import Table

from kyodo.cli._app import DEFAULT_DIR, DirOption, JsonOption, _fail, _progress, console
from kyodo.cli._network import LocalNetwork, revoked_serials
from kyodo.client import KyodoError
from kyodo.identity import Role, load_certificate

ca_app = typer.Typer(
    help="Issue, revoke and list the certificates of an organization's members.",
    no_args_is_help=True,
)

OrgArg = Annotated[str, typer.Option("--org", help="The organization.")]


def _network(folder: DirOption) -> LocalNetwork:
    try:
        return LocalNetwork(folder)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
        raise


@ca_app.command("init")
def ca_init(
    org: OrgArg,
    intermediate: Annotated[
        bool,
        typer.Option(
            "--intermediate",
            help="The root certifies an intermediate CA that issues every certificate "
            "(the root key can then stay offline).",
        ),
    ] = False,
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """Create the CA of ORG, a new organization, with its admin and user1; bring it in
    with `kyodo network add-validator --org ORG`."""
    net = _network(folder)
    try:
        where = net.init_org(org, intermediate=intermediate)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
        return
    kind = "root and intermediate CA" if intermediate else "root CA"
    console.print(
        f"{org}: {kind} in {where / 'ca'}; admin and user1 in {where / 'users'}. "
        f"Join the network with: kyodo network add-validator --org {org}"
    )


@ca_app.command("issue")
def ca_issue(
    name: str,
    org: OrgArg,
    role: Annotated[str, typer.Option(help="client, admin or auditor.")] = "client",
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """Issue NAME of ORG a signing and a TLS certificate with ROLE."""
    if role not in ("client", "admin", "auditor"):
        _fail(f"role {role!r}: client, admin or auditor")
    net = _network(folder)
    try:
        where = net.issue_member(org, name, Role(role))
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
        return
    console.print(f"issued {org}/{name} ({role}): keys and certificates in {where}")


@ca_app.command("revoke")
def ca_revoke(name: str, org: OrgArg, folder: DirOption = DEFAULT_DIR) -> None:
    """Revoke NAME's certificates: every node refuses them from the next height."""
    net = _network(folder)
    try:
        with _progress() as progress:
            task = progress.add_task("revoking", total=None)
            new = net.revoke_member(org, name, lambda m: progress.update(task, description=m))
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
        return
    console.print(
        f"revoked {org}/{name}: {org}'s revocation list is in force from configuration "
        f"epoch {new.epoch}"
    )


@ca_app.command("list")
def ca_list(org: OrgArg, folder: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """ORG's members: role, expiry, and whether the network has revoked them."""
    net = _network(folder)
    try:
        config = net.current_config()
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
        return
    info = next((o for o in config.orgs if o.org_id == org), None)
    if info is None:
        _fail(f"{org} is not in the configuration")
        return
    revoked = revoked_serials(info)
    rows = []
    users = sorted((net.folder / "orgs" / org / "users").iterdir())
    now = datetime.now(UTC)
    for user in users:
        cert = load_certificate((user / "signing.pem").read_bytes())
        ou = str(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value)
        rows.append(
            {
                "name": user.name,
                "role": ou,
                "expires": cert.not_valid_after_utc.date().isoformat(),
                "days_left": (cert.not_valid_after_utc - now).days,
                "revoked": cert.serial_number in revoked,
            }
        )
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"members of {org} (revoked: {len(revoked) // 2})")
    for column in ("name", "role", "expires", "days left", "status"):
        table.add_column(column)
    for row in rows:
        status = "[red]revoked[/]" if row["revoked"] else "valid"
        table.add_row(
            str(row["name"]), str(row["role"]), str(row["expires"]), str(row["days_left"]), status
        )
    console.print(table)
