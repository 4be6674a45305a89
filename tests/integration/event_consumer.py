"""A consumer process for the event-stream test of record: it follows a named
subscription through every gateway of its organization, appends each item to a file
(fsynced) and only then acknowledges it. Killed at any instant, it loses nothing:
what it had not acknowledged comes again, with the same idempotency key.

Usage: python -m tests.integration.event_consumer FOLDER ORG OUTPUT SUBSCRIPTION
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kyodo.cli._network import LocalNetwork
from kyodo.client import Subscription


def main() -> None:
    folder, org, output, name = sys.argv[1:5]
    net = LocalNetwork(Path(folder))
    addresses = [n.gateway for n in net.nodes if n.org_id == org]
    subscription = Subscription(name=name, contracts=("asset_transfer",), names=("AccountCreated",))
    with open(output, "a") as out:
        out.write(json.dumps({"start": os.getpid()}) + "\n")
        out.flush()
        os.fsync(out.fileno())
        with net.user(org).connect(addresses, timeout_s=10) as gateway:
            for event in gateway.network().events(subscription, window=64):
                out.write(
                    json.dumps({"key": event.idempotency_key, "account": event.payload["account"]})
                    + "\n"
                )
                out.flush()
                os.fsync(out.fileno())
                event.ack()


if __name__ == "__main__":
    main()
