"""Event streams: durable subscriptions over items derived from committed blocks."""

from kyodo.events._derive import info_json, item_json, items_of_block, jsonable
from kyodo.events._hub import (
    SIGNATURE_HEADER,
    EventHub,
    EventsError,
    LedgerReader,
    Session,
    check_filter,
    sign_webhook,
    verify_webhook,
)

__all__ = [
    "SIGNATURE_HEADER",
    "EventHub",
    "EventsError",
    "LedgerReader",
    "Session",
    "check_filter",
    "info_json",
    "item_json",
    "items_of_block",
    "jsonable",
    "sign_webhook",
    "verify_webhook",
]
