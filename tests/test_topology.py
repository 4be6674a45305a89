"""The topology check refuses validator sets that one organization's loss would halt."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kyodo.ledger import (
    ConsensusParams,
    FragileTopologyError,
    NetworkConfig,
    NodeInfo,
    check_topology,
)


def config(layout: dict[str, int]) -> NetworkConfig:
    nodes = tuple(
        NodeInfo(
            node_id=f"{org}-node{j}",
            org_id=org,
            signing_cert=b"",
            tls_cert_pem=b"",
            host="",
            p2p_port=0,
            gateway_port=0,
            validator=True,
        )
        for org, count in layout.items()
        for j in range(count)
    )
    params = ConsensusParams(
        max_batch_txs=1, max_batch_bytes=1, batch_timeout_ms=1, tx_max_age_ms=1
    )
    return NetworkConfig(
        chain_id="t",
        orgs=(),
        nodes=nodes,
        consensus=params,
        created_ms=0,
        allow_fragile_topology=False,
    )


@pytest.mark.parametrize(
    ("layout", "tolerated"),
    [
        ({"a": 1, "b": 1, "c": 1, "d": 1}, 1),
        ({"a": 2, "b": 2, "c": 2, "d": 1}, 2),
        ({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1}, 2),
    ],
)
def test_sets_that_survive_any_one_organization_are_accepted(layout, tolerated):
    report = check_topology(config(layout))
    assert not report.fragile and report.tolerated == tolerated


@pytest.mark.parametrize(
    ("layout", "org"),
    [
        ({"a": 1, "b": 1}, "a"),  # the proof of concept: two organizations
        ({"a": 2, "b": 2}, "a"),
        ({"a": 2, "b": 1, "c": 1}, "a"),  # n=4, f=1: a holds 2 votes
        ({"a": 1, "b": 1, "c": 1}, "a"),
    ],  # n=3 tolerates no fault (f=0): losing one leaves exactly a quorum
)
def test_sets_one_organization_could_halt_are_refused_with_the_reason(layout, org):
    with pytest.raises(FragileTopologyError) as refused:
        check_topology(config(layout))
    assert refused.value.org_id == org
    n = sum(layout.values())
    halts = n - layout[org] < {2: 2, 3: 2, 4: 3}[n]  # fewer than q validators remain
    expected = "would halt the network" if halts else "without any tolerance for a further"
    assert f"losing {org} " in str(refused.value) and expected in str(refused.value)
    report = check_topology(config(layout), allow_fragile=True)  # accepted knowingly
    assert report.fragile and org in report.fragile_orgs


def test_network_up_refuses_a_fragile_topology_before_writing_anything(tmp_path):
    folder = tmp_path / "net"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kyodo.cli._main",
            "network",
            "up",
            "--orgs",
            "2",
            "--dir",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "would halt the network" in out.stderr and "Traceback" not in out.stderr
    assert not folder.exists()
