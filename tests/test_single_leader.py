"""Tests of kyodo.consensus.SingleLeader, a pure state machine: events in, actions out."""

from __future__ import annotations

from typing import Any

import pytest

from kyodo.consensus import (
    AppendPeerBlock,
    BlockMessage,
    Broadcast,
    ForwardTx,
    ProposeBlock,
    RequestSync,
    Send,
    SingleLeader,
    SingleLeaderLimits,
    StatusMessage,
    SyncRequest,
    SyncResponse,
)
from kyodo.crypto import sha256
from kyodo.ledger import Block, BlockHeader, ConsensusParams, TxEnvelope

VALIDATORS = ("n1", "n2", "n3")
LEADER = "n1"
PARAMS = ConsensusParams(
    max_batch_txs=3, max_batch_bytes=1_000, batch_timeout_ms=50, tx_max_age_ms=60_000
)


def machine(
    node_id: str = LEADER,
    *,
    height: int = 0,
    params: ConsensusParams = PARAMS,
    **limits: Any,
) -> SingleLeader:
    return SingleLeader(
        node_id=node_id,
        validators=VALIDATORS,
        params=params,
        height=height,
        limits=SingleLeaderLimits(**limits),
    )


def envelope(n: int, size: int = 10) -> TxEnvelope:
    payload = n.to_bytes(4, "big") + b"p" * (size - 4)
    return TxEnvelope(payload=payload, signature=b"s")


def request(m: SingleLeader, n: int, now_ms: int, size: int = 10) -> list[Any]:
    env = envelope(n, size)
    return m.on_request(env, env.tx_id(), now_ms)


def block(height: int, *, proposer: str = LEADER, txs: tuple[TxEnvelope, ...] = ()) -> Block:
    header = BlockHeader(
        chain_id="test",
        height=height,
        prev_hash=sha256(b"%d" % (height - 1)),
        txs_root=b"",
        results_root=b"",
        state_root=b"",
        timestamp_ms=height,
        proposer=proposer,
        epoch=0,
        config_hash=b"",
    )
    return Block(header=header, txs=txs, results=(), certificate=(), config=None)


def proposals(actions: list[Any]) -> list[ProposeBlock]:
    return [a for a in actions if isinstance(a, ProposeBlock)]


def without_status(actions: list[Any]) -> list[Any]:
    return [
        a
        for a in actions
        if not (isinstance(a, Broadcast) and isinstance(a.message, StatusMessage))
    ]


def status(height: int) -> StatusMessage:
    return StatusMessage(height=height, tip_hash=b"")


# -- roles -------------------------------------------------------------------------------


def test_the_first_validator_leads() -> None:
    assert machine("n1").leader() == "n1"
    assert machine("n1").is_leader()
    assert machine("n3").leader() == "n1"
    assert not machine("n3").is_leader()


def test_node_must_be_a_validator() -> None:
    with pytest.raises(AssertionError):
        machine("outsider")


# -- the leader's pool and proposals -----------------------------------------------------


def test_leader_pools_until_the_batch_is_full() -> None:
    m = machine()
    assert request(m, 1, now_ms=0) == []
    assert request(m, 2, now_ms=1) == []
    assert m.pending_count() == 2
    assert m.contains(envelope(1).tx_id())
    assert request(m, 3, now_ms=2) == [ProposeBlock((envelope(1), envelope(2), envelope(3)))]


def test_leader_proposes_when_the_oldest_request_times_out() -> None:
    m = machine()
    assert request(m, 1, now_ms=1_000) == []
    assert request(m, 2, now_ms=1_030) == []
    assert proposals(m.on_tick(1_049)) == []
    assert proposals(m.on_tick(1_050)) == [ProposeBlock((envelope(1), envelope(2)))]


def test_leader_proposes_when_the_batch_bytes_are_reached() -> None:
    params = ConsensusParams(
        max_batch_txs=10, max_batch_bytes=100, batch_timeout_ms=50, tx_max_age_ms=60_000
    )
    m = machine(params=params)
    assert request(m, 1, now_ms=0, size=40) == []
    assert request(m, 2, now_ms=0, size=40) == []
    # 120 bytes pooled: a batch is due, and it holds what fits in 100 bytes
    assert request(m, 3, now_ms=0, size=40) == [ProposeBlock((envelope(1, 40), envelope(2, 40)))]


def test_an_oversized_transaction_still_gets_its_own_batch() -> None:
    params = ConsensusParams(
        max_batch_txs=10, max_batch_bytes=100, batch_timeout_ms=50, tx_max_age_ms=60_000
    )
    m = machine(params=params)
    assert request(m, 1, now_ms=0, size=500) == [ProposeBlock((envelope(1, 500),))]


def test_one_proposal_in_flight() -> None:
    m = machine()
    first = [envelope(i) for i in (1, 2, 3)]
    for i in (1, 2, 3):
        request(m, i, now_ms=0)
    # the pool refills while the first proposal is being built: nothing more is proposed
    for i in range(4, 10):
        assert request(m, i, now_ms=10) == []
    assert proposals(m.on_tick(10_000)) == []
    assert m.pending_count() == 9

    actions = m.on_block_appended(block(1, txs=tuple(first)), now_ms=10_001)
    assert actions[0] == Broadcast(BlockMessage(block=block(1, txs=tuple(first))))
    assert proposals(actions) == [ProposeBlock((envelope(4), envelope(5), envelope(6)))]
    assert m.height == 1
    assert m.pending_count() == 6
    assert not m.contains(envelope(1).tx_id())


def test_duplicate_request_is_pooled_once() -> None:
    m = machine()
    assert request(m, 1, now_ms=0) == []
    assert request(m, 1, now_ms=5) == []
    assert m.pending_count() == 1
    assert request(m, 2, now_ms=6) == []
    assert request(m, 3, now_ms=7) == [ProposeBlock((envelope(1), envelope(2), envelope(3)))]


def test_failed_proposal_frees_the_leader_to_propose_again() -> None:
    m = machine()
    for i in (1, 2, 3):
        request(m, i, now_ms=0)
    m.drop_requests([envelope(2).tx_id(), b"unknown"])
    assert m.pending_count() == 2
    assert m.on_proposal_failed(now_ms=1) == []
    assert proposals(m.on_tick(100)) == [ProposeBlock((envelope(1), envelope(3)))]


def test_leader_behind_a_peer_syncs_instead_of_proposing() -> None:
    m = machine()
    assert m.on_message("n2", status(3), now_ms=0) == [RequestSync("n2", 1)]
    request(m, 1, now_ms=0)
    request(m, 2, now_ms=0)
    assert request(m, 3, now_ms=0) == []
    assert proposals(m.on_tick(1_000)) == []


def test_pool_bound() -> None:
    params = ConsensusParams(
        max_batch_txs=100, max_batch_bytes=10_000, batch_timeout_ms=50, tx_max_age_ms=60_000
    )
    m = machine(params=params, max_pool_txs=2)
    assert not m.is_pool_full()
    request(m, 1, now_ms=0)
    assert not m.is_pool_full()
    request(m, 2, now_ms=0)
    assert m.is_pool_full()
    with pytest.raises(AssertionError):
        request(m, 3, now_ms=0)
    assert m.pending_count() == 2
    assert proposals(m.on_tick(50)) == [ProposeBlock((envelope(1), envelope(2)))]


# -- followers -----------------------------------------------------------------------------


def test_follower_forwards_requests_to_the_leader() -> None:
    m = machine("n2")
    env = envelope(1)
    assert m.on_request(env, env.tx_id(), now_ms=0) == [Send("n1", ForwardTx(envelope=env))]
    assert m.pending_count() == 0
    assert proposals(m.on_tick(10_000)) == []


def test_follower_appends_the_next_block() -> None:
    m = machine("n2", height=4)
    assert m.on_message("n1", BlockMessage(block=block(5)), now_ms=0) == [
        AppendPeerBlock(block(5), "n1")
    ]
    assert m.on_block_appended(block(5), now_ms=1) == []  # not its block: no broadcast
    assert m.height == 5
    assert m.on_message("n1", BlockMessage(block=block(6)), now_ms=2) == [
        AppendPeerBlock(block(6), "n1")
    ]


def test_follower_buffers_future_blocks_and_syncs_the_gap() -> None:
    m = machine("n2", height=0)
    assert m.on_message("n1", BlockMessage(block=block(3)), now_ms=0) == [RequestSync("n1", 1)]
    # one sync at a time; the new block is buffered too
    assert m.on_message("n1", BlockMessage(block=block(4)), now_ms=1) == []
    response = SyncResponse(blocks=(block(1), block(2)))
    assert m.on_message("n1", response, now_ms=2) == [AppendPeerBlock(block(1), "n1")]
    assert m.on_block_appended(block(1), now_ms=3) == [AppendPeerBlock(block(2), "n1")]
    assert m.on_block_appended(block(2), now_ms=4) == [AppendPeerBlock(block(3), "n1")]
    assert m.on_block_appended(block(3), now_ms=5) == [AppendPeerBlock(block(4), "n1")]
    assert m.on_block_appended(block(4), now_ms=6) == []
    assert m.height == 4


def test_blocks_are_handed_over_one_at_a_time_in_height_order() -> None:
    m = machine("n2", height=0)
    assert m.on_message("n1", BlockMessage(block=block(1)), now_ms=0) == [
        AppendPeerBlock(block(1), "n1")
    ]
    # block 2 arrives while block 1 is being verified: it waits
    assert m.on_message("n1", BlockMessage(block=block(2)), now_ms=1) == []
    assert m.on_block_appended(block(1), now_ms=2) == [AppendPeerBlock(block(2), "n1")]


def test_partial_sync_response_asks_for_the_rest() -> None:
    m = machine("n2", height=0)
    assert m.on_message("n3", status(5), now_ms=0) == [RequestSync("n3", 1)]
    response = SyncResponse(blocks=(block(1), block(2)))
    assert m.on_message("n3", response, now_ms=1) == [AppendPeerBlock(block(1), "n3")]
    assert m.on_block_appended(block(1), now_ms=2) == [AppendPeerBlock(block(2), "n3")]
    assert m.on_block_appended(block(2), now_ms=3) == [RequestSync("n3", 3)]


def test_old_and_duplicate_blocks_are_ignored() -> None:
    m = machine("n2", height=5)
    for height in (1, 4, 5):
        assert m.on_message("n1", BlockMessage(block=block(height)), now_ms=0) == []
    assert m.on_message("n1", BlockMessage(block=block(8)), now_ms=1) == [RequestSync("n1", 6)]
    assert m.on_message("n1", BlockMessage(block=block(8)), now_ms=2) == []
    assert m.on_message("n3", BlockMessage(block=block(8)), now_ms=3) == []
    # a sync answer holding only old blocks hands nothing over; the gap is asked for again
    actions = m.on_message("n1", SyncResponse(blocks=(block(3), block(5))), now_ms=4)
    assert len(actions) == 1
    assert isinstance(actions[0], RequestSync)
    assert actions[0].from_height == 6
    assert actions[0].peer in ("n1", "n3")


def test_rejected_block_is_fetched_from_another_peer() -> None:
    m = machine("n2", height=0)
    assert m.on_message("n1", BlockMessage(block=block(1)), now_ms=0) == [
        AppendPeerBlock(block(1), "n1")
    ]
    assert m.on_message("n3", status(1), now_ms=1) == []  # busy verifying
    assert m.on_block_rejected(block(1), "n1", now_ms=2) == [RequestSync("n3", 1)]
    assert m.height == 0
    response = SyncResponse(blocks=(block(1),))
    assert m.on_message("n3", response, now_ms=3) == [AppendPeerBlock(block(1), "n3")]


def test_rejected_block_without_another_peer_waits() -> None:
    m = machine("n2", height=0)
    m.on_message("n1", BlockMessage(block=block(1)), now_ms=0)
    assert m.on_block_rejected(block(1), "n1", now_ms=1) == []
    # a later status from anyone ahead restarts the sync
    assert m.on_message("n1", status(1), now_ms=2) == [RequestSync("n1", 1)]


def test_status_from_a_peer_ahead_triggers_sync() -> None:
    m = machine("n2", height=3)
    assert m.on_message("n3", status(2), now_ms=0) == []
    assert m.on_message("n3", status(3), now_ms=0) == []
    assert m.on_message("n3", status(9), now_ms=0) == [RequestSync("n3", 4)]
    # a sync is already outstanding
    assert m.on_message("n1", status(12), now_ms=1) == []


def test_sync_goes_to_the_peer_furthest_ahead() -> None:
    m = machine("n2", height=0)
    m.on_message("n1", BlockMessage(block=block(2)), now_ms=0)  # asks n1
    m.on_message("n3", status(7), now_ms=0)
    # n1 did not answer in time: the retry goes to n3, who is furthest ahead
    actions = m.on_tick(1_001)
    assert [a for a in actions if isinstance(a, RequestSync)] == [RequestSync("n3", 1)]


def test_unanswered_sync_is_retried_after_the_retry_interval() -> None:
    m = machine("n2", height=0, sync_retry_ms=500)
    assert m.on_message("n3", status(4), now_ms=0) == [RequestSync("n3", 1)]
    assert without_status(m.on_tick(400)) == []
    assert without_status(m.on_tick(500)) == []
    assert without_status(m.on_tick(501)) == [RequestSync("n3", 1)]


def test_buffer_bound() -> None:
    m = machine("n2", height=0, max_buffered_blocks=2)
    assert m.on_message("n1", BlockMessage(block=block(1)), now_ms=0) == [
        AppendPeerBlock(block(1), "n1")
    ]
    assert m.on_message("n1", BlockMessage(block=block(2)), now_ms=1) == []
    assert m.on_message("n1", BlockMessage(block=block(3)), now_ms=2) == []
    assert m.on_message("n1", BlockMessage(block=block(4)), now_ms=3) == []  # buffer full: dropped
    assert m.on_block_appended(block(1), now_ms=4) == [AppendPeerBlock(block(2), "n1")]
    assert m.on_block_appended(block(2), now_ms=5) == [AppendPeerBlock(block(3), "n1")]
    # block 4 was not kept: it is fetched again
    assert m.on_block_appended(block(3), now_ms=6) == [RequestSync("n1", 4)]


def test_sync_response_is_cut_to_the_buffer_bound() -> None:
    m = machine("n2", height=0, max_buffered_blocks=2)
    response = SyncResponse(blocks=tuple(block(h) for h in range(1, 6)))
    assert m.on_message("n1", response, now_ms=0) == [AppendPeerBlock(block(1), "n1")]
    assert m.on_block_appended(block(1), now_ms=1) == [AppendPeerBlock(block(2), "n1")]
    assert m.on_block_appended(block(2), now_ms=2) == []
    assert m.height == 2


def test_full_buffer_still_accepts_the_next_block() -> None:
    m = machine("n2", height=0, max_buffered_blocks=2)
    assert m.on_message("n1", BlockMessage(block=block(2)), now_ms=0) == [RequestSync("n1", 1)]
    assert m.on_message("n1", BlockMessage(block=block(3)), now_ms=1) == []
    response = SyncResponse(blocks=(block(1), block(2), block(3)))
    assert m.on_message("n1", response, now_ms=2) == [AppendPeerBlock(block(1), "n1")]


# -- status and housekeeping ---------------------------------------------------------------


def test_status_is_broadcast_every_interval() -> None:
    m = machine("n2", height=7, status_interval_ms=2_000)
    assert m.on_tick(0) == [Broadcast(status(7))]
    assert m.on_tick(1_999) == []
    assert m.on_tick(2_000) == [Broadcast(status(7))]


def test_connected_peer_is_told_the_tip() -> None:
    assert machine("n3", height=11).on_peer_connected("n1", now_ms=0) == [Send("n1", status(11))]


@pytest.mark.parametrize(
    "message",
    [ForwardTx(envelope=envelope(1)), SyncRequest(from_height=1, max_blocks=10)],
)
def test_shell_handles_forwards_and_sync_requests(message: Any) -> None:
    with pytest.raises(AssertionError):
        machine("n1").on_message("n2", message, now_ms=0)


def test_appending_out_of_order_is_a_shell_bug() -> None:
    m = machine("n2", height=3)
    with pytest.raises(AssertionError):
        m.on_block_appended(block(5), now_ms=0)
