"""Stream items derived from a committed block: the same on every node.

A block's items are, in this order: its block item (``(h, -1, 0)``), then per
transaction ``t``: its transaction item (``(h, t, 0)``), or its events
(``(h, t, e)``, emission order) followed by its state changes (``(h, t, n + w)``,
``n`` events, ``w``-th write in execution order). A subscription has one kind, so
the positions of the items it sees never collide.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from kyodo.ledger import Block, split_state_key
from kyodo.wire import FAILURE_CODES, EventFilter, StreamItem, SubscriptionInfo, TxStatus

__all__ = ["BEFORE", "info_json", "item_json", "items_of_block", "jsonable"]

BEFORE = -1
"""Position component meaning "before everything" of a block or transaction."""

Write = tuple[bytes, int, Any]
"""A state change of a block: (state key, tx_index, new value or None)."""


def items_of_block(
    block: Block,
    flt: EventFilter,
    writes: Sequence[Write] | None,
    *,
    after: tuple[int, int, int] | None = None,
) -> list[StreamItem]:
    """The items of ``block`` that ``flt`` selects, after ``after`` (a position)."""
    header = block.header
    h = header.height
    out: list[StreamItem] = []
    contracts = set(flt.contracts)
    names = set(flt.names)

    def keep(item: StreamItem) -> None:
        if after is None or item.position > after:
            out.append(item)

    if flt.kind == "blocks":
        keep(
            StreamItem(
                kind="block",
                height=h,
                tx_index=-1,
                index=0,
                tx_id=b"",
                contract="",
                name="",
                key="",
                payload={
                    "hash": block.block_hash().hex(),
                    "tx_count": len(block.txs),
                    "state_root": header.state_root.hex(),
                },
                status="",
                message="",
                timestamp_ms=header.timestamp_ms,
            )
        )
        return out
    by_tx: dict[int, list[tuple[str, str, Any]]] = {}
    if flt.kind == "events" and flt.include_state and writes:
        for state_key, tx_index, value in writes:
            namespace, key = split_state_key(state_key)
            if not contracts or namespace in contracts:
                by_tx.setdefault(tx_index, []).append((namespace, key, value))
    for t, (envelope, result) in enumerate(zip(block.txs, block.results, strict=True)):
        tx = envelope.transaction()
        tx_id = envelope.tx_id()
        if flt.kind == "transactions":
            if contracts and tx.contract not in contracts:
                continue
            keep(
                StreamItem(
                    kind="transaction",
                    height=h,
                    tx_index=t,
                    index=0,
                    tx_id=tx_id,
                    contract=tx.contract,
                    name=tx.function,
                    key="",
                    payload=result.result,
                    status="OK"
                    if result.status == TxStatus.OK
                    else FAILURE_CODES.get(result.status, str(result.status)),
                    message=result.message,
                    timestamp_ms=header.timestamp_ms,
                )
            )
            continue
        for e, event in enumerate(result.events):
            if contracts and event.contract not in contracts:
                continue
            if names and event.name not in names:
                continue
            keep(
                StreamItem(
                    kind="event",
                    height=h,
                    tx_index=t,
                    index=e,
                    tx_id=tx_id,
                    contract=event.contract,
                    name=event.name,
                    key="",
                    payload=event.payload,
                    status="",
                    message="",
                    timestamp_ms=header.timestamp_ms,
                )
            )
        for w, (namespace, key, value) in enumerate(by_tx.get(t, ())):
            keep(
                StreamItem(
                    kind="state",
                    height=h,
                    tx_index=t,
                    index=len(result.events) + w,
                    tx_id=tx_id,
                    contract=namespace,
                    name="",
                    key=key,
                    payload=value,
                    status="",
                    message="",
                    timestamp_ms=header.timestamp_ms,
                )
            )
    return out


def jsonable(value: Any) -> Any:
    """A canonical value as JSON (bytes as ``{"$bytes": base64}``)."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def item_json(item: StreamItem, subscription: str = "") -> dict[str, Any]:
    """An item as the JSON that SSE, WebSocket and webhooks carry."""
    return {
        "subscription": subscription,
        "kind": item.kind,
        "height": item.height,
        "tx_index": item.tx_index,
        "index": item.index,
        "position": list(item.position),
        "idempotency_key": item.idempotency_key,
        "tx_id": item.tx_id.hex(),
        "contract": item.contract,
        "name": item.name,
        "key": item.key,
        "payload": jsonable(item.payload),
        "status": item.status,
        "message": item.message,
        "timestamp_ms": item.timestamp_ms,
    }


def info_json(info: SubscriptionInfo) -> dict[str, Any]:
    """A subscription's status as JSON (REST, ``kyodo events --json``); never its secret."""
    return {
        "name": info.name,
        "owner": info.owner,
        "kind": info.filter.kind,
        "contracts": list(info.filter.contracts),
        "names": list(info.filter.names),
        "include_state": info.filter.include_state,
        "start": info.start,
        "start_height": info.start_height,
        "webhook_url": info.webhook_url,
        "max_attempts": info.max_attempts,
        "checkpoint": list(info.checkpoint),
        "created_ms": info.created_ms,
        "acked": info.acked,
        "connected": info.connected,
        "failures": info.failures,
        "last_error": info.last_error,
        "dead_letters": [
            {
                "idempotency_key": d.key,
                "position": list(d.position),
                "attempts": d.attempts,
                "error": d.error,
                "at_ms": d.at_ms,
            }
            for d in info.dead_letters
        ],
    }
