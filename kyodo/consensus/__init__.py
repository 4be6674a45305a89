"""The consensus manager: the ordering protocol behind one interface."""

from kyodo.consensus._api import (
    Action,
    AppendPeerBlock,
    BlockMessage,
    Broadcast,
    Consensus,
    ForwardTx,
    Message,
    ProposeBlock,
    RequestSync,
    Send,
    StatusMessage,
    SyncRequest,
    SyncResponse,
)
from kyodo.consensus._single_leader import SingleLeader, SingleLeaderLimits

__all__ = [
    "Action",
    "AppendPeerBlock",
    "BlockMessage",
    "Broadcast",
    "Consensus",
    "ForwardTx",
    "Message",
    "ProposeBlock",
    "RequestSync",
    "Send",
    "SingleLeader",
    "SingleLeaderLimits",
    "StatusMessage",
    "SyncRequest",
    "SyncResponse",
]
