"""The Python SDK for asyncio: the same shape as :mod:`kyodo.client`, awaited.

::

    async with connect(identity, signer, "127.0.0.1:7051", tls=tls) as gateway:
        contract = gateway.network().contract("asset_transfer")
        result = await contract.submit("transfer", "acct-a", "acct-b", 10)
        balance = await contract.evaluate("balance", "acct-a")
        async with gateway.network().events(Subscription(name="feed")) as stream:
            async for event in stream:
                ...
                await event.ack()

Theory of operation
-------------------
Every call goes through the sync SDK's pure helpers (:func:`sign_transaction`,
:func:`sign_request`, :func:`outcome`, :func:`retry_delay`, :func:`typed_error`,
:func:`channel_options`), so both flavours sign, retry, fail over and report
errors identically; only the transport differs (``grpc.aio``).

A gateway object belongs to one event loop: its channel is created lazily, on the
first call, inside the running loop. With several addresses, a call that finds its
gateway unavailable moves to the next one; calls running concurrently on the
channel that failed move only once (the failover happens only if the channel is
still the one the failed call used). Two of grpc.aio's ways of failing count as
``Unavailable`` too, so they are retried like the sync SDK's UNAVAILABLE: a call
whose channel a failover closed under it (grpc.aio raises CancelledError in a task
nobody cancelled), and a stream whose connection broke while an acknowledgement was
being sent (grpc.aio ends it with INTERNAL, without the gateway's error trailer).

An :class:`AsyncEventStream` sends its requests from a queue: the signed
``StreamOpen``, then one ``StreamAck`` per ``await event.ack()``. Closing it
half-closes the request side after the acknowledgements already queued, lets the
node end the stream (at most ``flush_s``), and only then cancels the call, so a
consumer's last acknowledgements reach the node. Delivery is at least once: after
a lost connection the stream resumes, on the next address if there are several,
after the last acknowledged item. One caveat of asyncio: when the task reading the
stream is *cancelled*, gRPC cancels the call at once (acknowledgements given long
enough before have been sent; a very recent one may not have been).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from kyodo.client._events import (
    AsyncAck,
    Checkpointer,
    LedgerEvent,
    Subscription,
    event_filter,
    replay_ended,
)
from kyodo.client._gateway import (
    Identity,
    SubmitResult,
    TlsCredentials,
    TxState,
    addresses_of,
    channel_options,
    outcome,
    retry_delay,
    sign_request,
    sign_transaction,
    typed_error,
)
from kyodo.client._wallet import UserCredentials
from kyodo.client.errors import KyodoError, RateLimited, TransactionRejected, Unavailable
from kyodo.codec import decode_record, encode
from kyodo.crypto import Signer
from kyodo.wire import (
    GATEWAY_SERVICE,
    BlockRequest,
    BlockResponse,
    ConfigResponse,
    ContractList,
    EvaluateResponse,
    EventFilter,
    NodeStatus,
    SignedRequest,
    StatusRequest,
    StreamAck,
    StreamBatch,
    StreamOpen,
    SubmitRequest,
    SubscribeRequest,
    SubscriptionInfo,
    SubscriptionList,
    SubscriptionRequest,
    TxEnvelope,
    TxRequest,
    TxResponse,
    TxStatusResponse,
    check_position,
)

__all__ = [
    "AsyncCommit",
    "AsyncContract",
    "AsyncEventStream",
    "AsyncGateway",
    "AsyncNetwork",
    "connect",
    "connect_user",
]

R = TypeVar("R")
Position = tuple[int, int, int]

STREAM_FLUSH_S = 2.0
"""How long closing a stream waits for the node to end it after the half-close."""


def connect(
    identity: Identity,
    signer: Signer,
    address: str | Sequence[str],
    *,
    tls: TlsCredentials,
    timeout_s: float = 30.0,
    retries: int = 3,
) -> AsyncGateway:
    """A gateway connection (lazily: the first call connects, in the running loop).

    ``address`` may list several gateways of your organization: when one is
    unreachable (or quarantined) the SDK moves to the next, and event streams resume
    there from their last acknowledged position.
    """
    return AsyncGateway(identity, signer, address, tls=tls, timeout_s=timeout_s, retries=retries)


def connect_user(
    credentials: UserCredentials,
    address: str | Sequence[str],
    *,
    timeout_s: float = 30.0,
    retries: int = 3,
) -> AsyncGateway:
    """Connect as the user of ``credentials`` (:func:`kyodo.client.load_user`)."""
    return connect(
        credentials.identity,
        credentials.signer,
        address,
        tls=credentials.tls,
        timeout_s=timeout_s,
        retries=retries,
    )


class AsyncGateway:
    """A connection to a gateway of your organization, acting as one identity."""

    def __init__(
        self,
        identity: Identity,
        signer: Signer,
        address: str | Sequence[str],
        *,
        tls: TlsCredentials,
        timeout_s: float,
        retries: int,
    ) -> None:
        self.identity = identity
        self._signer = signer
        self._timeout_s = timeout_s
        self._retries = retries
        self.addresses = addresses_of(address)
        self._credentials = tls.channel_credentials()
        self._index = 0
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    @property
    def address(self) -> str:
        """The gateway in use now."""
        return self.addresses[self._index]

    def channel(self) -> grpc.aio.Channel:
        """The gRPC channel to the gateway in use (created on first use, in the
        running event loop)."""
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(
                self.address, self._credentials, options=channel_options()
            )
            self._calls = {}
        return self._channel

    async def failover(self) -> None:
        """Move to the next gateway address (no-op with a single address)."""
        if len(self.addresses) == 1:
            return
        old, self._channel = self._channel, None
        self._index = (self._index + 1) % len(self.addresses)
        if old is not None:
            await old.close()

    async def _failover_from(self, used: grpc.aio.Channel) -> None:
        """Fail over if ``used`` is still the channel in use: concurrent calls that
        failed on the same channel move to the next address once, not once each."""
        if self._channel is used:
            await self.failover()

    async def close(self) -> None:
        """Close the connection."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def network(self) -> AsyncNetwork:
        """The network this gateway belongs to."""
        return AsyncNetwork(self)

    def contract(self, name: str) -> AsyncContract:
        """Shortcut for ``network().contract(name)``."""
        return AsyncNetwork(self).contract(name)

    # -- building and signing --------------------------------------------------------

    def sign(
        self, contract: str, function: str, args: tuple[Any, ...], *, query: bool = False
    ) -> TxEnvelope:
        """A signed envelope for one call (its id is fixed from here on). A ``query``
        envelope is signed under the query domain: it cannot be ordered as a transaction."""
        return sign_transaction(self.identity, self._signer, contract, function, args, query=query)

    def sign_request(self, method: str, body: bytes) -> SignedRequest:
        """A signed request for ``method`` carrying ``body`` (an encoded request record)."""
        return sign_request(self.identity, self._signer, method, body)

    # -- calls -----------------------------------------------------------------------

    async def _retrying(self, attempt: Callable[[], Awaitable[R]], retries: int) -> R:
        """``attempt()`` until it does not fail transiently, at most ``retries`` more
        times: Unavailable moves to the next gateway, both wait (retry_delay)."""
        delay = 0.1
        for n in range(retries + 1):
            used = self.channel()
            try:
                return await attempt()
            except KyodoError as error:
                wait = retry_delay(error, delay)
                if wait is None or n == retries:
                    raise
                if isinstance(error, Unavailable):
                    await self._failover_from(used)
                await asyncio.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")

    async def _call_once(
        self, method: str, body: bytes, response_type: type[R], timeout_s: float | None
    ) -> R:
        """One request on the channel in use; a refusal as a typed error."""
        channel = self.channel()
        stub = self._calls.get(method)
        if stub is None:
            stub = channel.unary_unary(f"/{GATEWAY_SERVICE}/{method}")
            self._calls[method] = stub
        try:
            raw = await stub(body, timeout=timeout_s or self._timeout_s)
        except grpc.RpcError as exc:
            raise _typed_error(exc) from None
        except asyncio.CancelledError:
            if _is_cancelling():  # our task is cancelled: let it end
                raise
            # the channel was closed under the call (a failover by a concurrent call)
            raise Unavailable("the call's channel was closed", code="unavailable") from None
        return decode_record(response_type, raw)

    async def call(
        self,
        method: str,
        request: Any,
        response_type: type[R],
        timeout_s: float | None = None,
        *,
        retries: int | None = None,
    ) -> R:
        """Send one request, retrying transient failures (on the next gateway when one is
        unavailable); raise a typed error if refused."""
        body = encode(request)
        return await self._retrying(
            lambda: self._call_once(method, body, response_type, timeout_s),
            self._retries if retries is None else retries,
        )

    async def signed_call(
        self, method: str, request: Any, response_type: type[R], timeout_s: float | None = None
    ) -> R:
        """A read or status call, signed by this identity (signed afresh on every retry:
        the gateway refuses a signed request it has seen)."""
        body = encode(request)

        async def attempt() -> R:
            signed = encode(self.sign_request(method, body))
            return await self._call_once(method, signed, response_type, timeout_s)

        return await self._retrying(attempt, self._retries)

    async def evaluate(
        self, contract: str, function: str, args: tuple[Any, ...]
    ) -> EvaluateResponse:
        """Run a query, signed afresh on every retry (a gateway refuses a replayed one)."""

        async def attempt() -> EvaluateResponse:
            envelope = self.sign(contract, function, args, query=True)
            return await self._call_once("Evaluate", encode(envelope), EvaluateResponse, None)

        return await self._retrying(attempt, self._retries)

    async def submit_envelope(
        self, envelope: TxEnvelope, *, wait_s: float = 30.0
    ) -> TxStatusResponse:
        """Submit a signed envelope and wait up to ``wait_s`` for finality."""
        request = SubmitRequest(envelope=envelope, wait_ms=int(wait_s * 1000))
        try:
            response: TxStatusResponse = await self.call(
                "Submit", request, TxStatusResponse, timeout_s=wait_s + 10
            )
        except TransactionRejected as exc:
            if exc.reason != "duplicate":
                raise
            # a retry of an envelope the gateway already accepted: report its status
            response = await self.tx_status(envelope.tx_id(), wait_s=wait_s)
            if response.state == "unknown":
                raise
        return response

    async def status(self) -> NodeStatus:
        """The gateway node's status."""
        return await self.signed_call("NodeStatus", StatusRequest(tx_id=b"", wait_ms=0), NodeStatus)

    async def config(self) -> ConfigResponse:
        """The newest network configuration (decode ``.config`` with kyodo.ledger)."""
        return await self.signed_call(
            "GetConfig", StatusRequest(tx_id=b"", wait_ms=0), ConfigResponse
        )

    async def block(self, height: int = -1) -> bytes:
        """A block's canonical bytes (-1 for the tip)."""
        response: BlockResponse = await self.signed_call(
            "GetBlock", BlockRequest(height=height), BlockResponse
        )
        return response.block

    async def transaction(self, tx_id: bytes) -> TxResponse:
        """A committed transaction with its result."""
        return await self.signed_call("GetTransaction", TxRequest(tx_id=tx_id), TxResponse)

    async def tx_status(self, tx_id: bytes, *, wait_s: float = 0.0) -> TxStatusResponse:
        """Where a transaction stands (optionally waiting for finality)."""
        return await self.signed_call(
            "TxStatus",
            StatusRequest(tx_id=tx_id, wait_ms=int(wait_s * 1000)),
            TxStatusResponse,
            timeout_s=wait_s + 10,
        )


class AsyncNetwork:
    """The network behind a gateway."""

    def __init__(self, gateway: AsyncGateway) -> None:
        self.gateway = gateway

    def contract(self, name: str) -> AsyncContract:
        """A deployed contract, by name."""
        return AsyncContract(self.gateway, name)

    async def contracts(self) -> list[dict[str, Any]]:
        """The contracts you can call: functions, parameters, read-only, access rules."""
        response: ContractList = await self.gateway.signed_call(
            "ListContracts", StatusRequest(tx_id=b"", wait_ms=0), ContractList
        )
        return list(response.contracts)

    async def subscribe(
        self, subscription: Subscription, *, after: Position | None = None
    ) -> SubscriptionInfo:
        """Create the durable subscription on the gateway's node (or accept the same
        declaration again). ``after``: your own checkpoint, when failing over."""
        return await self.gateway.signed_call(
            "Subscribe",
            SubscribeRequest(spec=subscription.spec(), after=after),
            SubscriptionInfo,
        )

    async def subscription(self, name: str) -> SubscriptionInfo:
        """A subscription of your organization and where it stands (checkpoint, dead
        letters, webhook failures)."""
        return await self.gateway.signed_call(
            "GetSubscription", SubscriptionRequest(name=name), SubscriptionInfo
        )

    async def subscriptions(self) -> list[SubscriptionInfo]:
        """Your organization's subscriptions on the gateway's node."""
        response: SubscriptionList = await self.gateway.signed_call(
            "ListSubscriptions", StatusRequest(tx_id=b"", wait_ms=0), SubscriptionList
        )
        return list(response.subscriptions)

    async def unsubscribe(self, name: str) -> SubscriptionInfo:
        """Delete a subscription (its last state is returned)."""
        return await self.gateway.signed_call(
            "DeleteSubscription", SubscriptionRequest(name=name), SubscriptionInfo
        )

    def events(
        self,
        subscription: Subscription | str | None = None,
        *,
        kind: str = "events",
        contracts: Sequence[str] = (),
        names: Sequence[str] = (),
        include_state: bool = False,
        after: Position | None = None,
        checkpointer: Checkpointer | None = None,
        window: int = 256,
        until: int | None = None,
    ) -> AsyncEventStream:
        """Items in ledger order: ``async for event in network.events(sub): ...;
        await event.ack()``. The parameters and guarantees are those of the sync
        :meth:`kyodo.client.Network.events`."""
        return AsyncEventStream(
            self.gateway,
            subscription=subscription,
            flt=event_filter(kind, contracts, names, include_state),
            after=after,
            checkpointer=checkpointer,
            window=window,
            until=until,
        )


class AsyncCommit:
    """A transaction submitted without waiting (:meth:`AsyncContract.submit_async`)."""

    def __init__(self, gateway: AsyncGateway, envelope: TxEnvelope) -> None:
        self._gateway = gateway
        self._envelope = envelope
        self.tx_id = envelope.tx_id().hex()

    async def status(self, *, wait_s: float = 0.0) -> TxState:
        """Where it stands now (or once final, waiting up to ``wait_s``)."""
        response = await self._gateway.tx_status(bytes.fromhex(self.tx_id), wait_s=wait_s)
        return TxState.of(response)

    async def result(self, *, wait_s: float = 30.0) -> SubmitResult:
        """Wait until final; the result, or the typed error of the failure. If the gateway
        lost track of it (restart before ordering), the same signed envelope is sent
        again: the id is fixed, so it can never apply twice."""
        response = await self._gateway.tx_status(bytes.fromhex(self.tx_id), wait_s=wait_s)
        if response.state == "unknown":
            response = await self._gateway.submit_envelope(self._envelope, wait_s=wait_s)
        return outcome(response, self.tx_id, wait_s)


class AsyncContract:
    """Calls to one contract."""

    def __init__(self, gateway: AsyncGateway, name: str) -> None:
        self.gateway = gateway
        self.name = name

    async def submit(self, function: str, *args: Any, wait_s: float = 30.0) -> Any:
        """Order a transaction, wait until final, return the function's result.

        Raises ContractFailed when the contract refused it (the failure is recorded
        in the block), TransactionRejected when it was not admitted, NotFinal when it
        was not final within ``wait_s``.
        """
        return (await self.submit_transaction(function, *args, wait_s=wait_s)).result

    async def submit_transaction(
        self, function: str, *args: Any, wait_s: float = 30.0
    ) -> SubmitResult:
        """Like :meth:`submit`, returning the transaction id and position too."""
        envelope = self.gateway.sign(self.name, function, args)
        response = await self.gateway.submit_envelope(envelope, wait_s=wait_s)
        return outcome(response, envelope.tx_id().hex(), wait_s)

    async def submit_async(self, function: str, *args: Any) -> AsyncCommit:
        """Order a transaction and return once the gateway accepted it; ``.status()``
        and ``.result()`` follow it (the transaction id is fixed at signing)."""
        envelope = self.gateway.sign(self.name, function, args)
        await self.gateway.submit_envelope(envelope, wait_s=0.0)
        return AsyncCommit(self.gateway, envelope)

    async def evaluate(self, function: str, *args: Any) -> Any:
        """Run a query against committed state; nothing is written."""
        return (await self.gateway.evaluate(self.name, function, args)).result


class AsyncEventStream:
    """A consumer's stream of :class:`LedgerEvent` (see :meth:`AsyncNetwork.events`):
    an async iterator; ``await event.ack()`` acknowledges an item."""

    def __init__(
        self,
        gateway: AsyncGateway,
        *,
        subscription: Subscription | str | None,
        flt: EventFilter,
        after: Position | None,
        checkpointer: Checkpointer | None,
        window: int,
        until: int | None = None,
    ) -> None:
        self._gateway = gateway
        self._until = -1 if until is None else until
        self._ended = False
        """A replay's node ended it after its last block: iteration stops."""
        self._subscription = subscription
        self._filter = flt
        self._checkpointer = checkpointer
        self._window = window
        if after is None and checkpointer is not None:
            after = checkpointer.load()
        self._acked: Position | None = after
        """The last position this consumer acknowledged (where a reopen resumes)."""
        self._known: Position | None = None
        """The subscription's checkpoint when first declared (before any ack)."""
        self._saving = asyncio.Lock()
        """Checkpointer saves, one at a time in the order of the acks."""
        self._requests: asyncio.Queue[bytes | None] | None = None
        self._call: Any = None
        self._used: Any = None
        """The channel of the last attempt to open the stream (failover moves on from it)."""
        self._items: AsyncGenerator[LedgerEvent, None] | None = None
        self._flush_s = STREAM_FLUSH_S
        self._reading = False
        """Whether the consumer is inside ``__anext__`` (waiting for an item)."""
        self._closed = False
        self.reconnects = 0

    @property
    def name(self) -> str:
        """The subscription's name ("" for an inline stream)."""
        if isinstance(self._subscription, Subscription):
            return self._subscription.name
        return self._subscription or ""

    @property
    def acked(self) -> Position | None:
        """The last acknowledged position."""
        return self._acked

    async def close(self, *, flush_s: float = STREAM_FLUSH_S) -> None:
        """End the stream (from any task of the loop); iteration stops. Acknowledgements
        already given are sent first: the request side is closed, and the node ends the
        stream once it has read them (at most ``flush_s``)."""
        self._closed = True
        self._flush_s = flush_s
        items = self._items
        if items is not None and not self._reading:
            # the consumer holds an item or left the loop: closing the generator runs
            # its cleanup, which flushes the call (and drains what the node still sends)
            await items.aclose()
        elif self._requests is not None and self._call is not None:
            # the consumer is waiting for an item: it will see the node end the stream
            await _finish(self._call, self._requests, flush_s, drain=False)

    async def aclose(self) -> None:
        """Same as :meth:`close` (the async-generator protocol's name)."""
        await self.close()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> LedgerEvent:
        if self._items is None:
            self._items = self._iterate()
        self._reading = True
        try:
            return await anext(self._items)
        finally:
            self._reading = False

    async def _iterate(self) -> AsyncGenerator[LedgerEvent, None]:
        delay = 0.2
        while not self._closed and not self._ended:
            self._used = self._gateway.channel()
            try:
                async with contextlib.aclosing(self._open()) as events:
                    async for event in events:
                        delay = 0.2
                        yield event
            except (Unavailable, RateLimited) as error:
                if self._closed:
                    return
                wait = retry_delay(error, delay) or delay
                if isinstance(error, Unavailable):
                    await self._gateway._failover_from(self._used)
                self.reconnects += 1
                await asyncio.sleep(wait)
                delay = min(delay * 2, 5.0)

    async def _open_request(self) -> StreamOpen:
        resume = self._acked or self._known
        if isinstance(self._subscription, Subscription):
            network = AsyncNetwork(self._gateway)
            info = await network.subscribe(self._subscription, after=resume)
            if self._known is None:
                self._known = check_position(info.checkpoint)
        if self.name:
            return StreamOpen(
                subscription=self.name,
                after=resume,
                window=self._window,
                until_height=self._until,
            )
        return StreamOpen(
            filter=self._filter, after=resume, window=self._window, until_height=self._until
        )

    def _ack_hook(self, requests: asyncio.Queue[bytes | None]) -> AsyncAck:
        """The ``ack`` of the items of one call: save the checkpoint (if the consumer
        keeps it), remember the position, queue the acknowledgement for the node."""

        async def ack(position: Position) -> None:
            if self._checkpointer is not None:
                async with self._saving:
                    await asyncio.to_thread(self._checkpointer.save, position)
            if self._acked is None or position > self._acked:
                self._acked = position
            requests.put_nowait(encode(StreamAck(position=position)))

        return ack

    async def _open(self) -> AsyncGenerator[LedgerEvent, None]:
        opened = await self._open_request()
        if self._closed:  # closed from another task while declaring the subscription
            return
        requests: asyncio.Queue[bytes | None] = asyncio.Queue()
        requests.put_nowait(encode(self._gateway.sign_request("Events", encode(opened))))

        async def outgoing() -> AsyncIterator[bytes]:
            while (message := await requests.get()) is not None:
                yield message

        self._used = channel = self._gateway.channel()
        call = channel.stream_stream(f"/{GATEWAY_SERVICE}/Events")(outgoing())
        self._requests, self._call = requests, call
        ack = self._ack_hook(requests)
        try:
            while (raw := await call.read()) is not grpc.aio.EOF:
                batch: StreamBatch = decode_record(StreamBatch, raw)
                for item in batch.items:
                    if self._closed:
                        return
                    yield LedgerEvent.from_item(item, ack)
                if replay_ended(batch, self._until):  # the node said so: we close our
                    self._ended = True  # side (acks sent first), it ends the call
                    return
        except grpc.RpcError as exc:
            if self._closed:
                return
            raise _typed_error(exc) from None
        except asyncio.CancelledError:
            if _is_cancelling():  # our task is cancelled: let it end
                raise
            if self._closed:  # close() cancelled the call after flush_s
                return
            # the channel was closed under the call (a failover by a concurrent call)
            raise Unavailable("the event stream's channel was closed", code="unavailable") from None
        finally:  # also when the consumer stops iterating: its acks are sent first
            await _finish(call, requests, self._flush_s, drain=True)
        if self._until >= 0:  # a replay: the node ended it after the last block
            self._ended = True
            return
        if not self._closed:  # the node ended the stream (stopping): resume elsewhere
            raise Unavailable("the gateway ended the event stream", code="unavailable")


def _typed_error(exc: grpc.RpcError) -> KyodoError:
    """The sync SDK's :func:`typed_error`, and one case of grpc.aio's: a message that
    cannot be sent because the connection broke ends the call with INTERNAL ("Internal
    error from Core", set by the client library, without the gateway's error trailer)
    instead of UNAVAILABLE. The gateway's own INTERNAL always carries the trailer."""
    error = typed_error(exc)
    if error.code == "error" and exc.code() == grpc.StatusCode.INTERNAL:
        return Unavailable(f"gateway connection lost: {exc.details()}", code="unavailable")
    return error


def _is_cancelling() -> bool:
    """Whether the current task has been asked to cancel."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _finish(
    call: Any, requests: asyncio.Queue[bytes | None], flush_s: float, *, drain: bool
) -> None:
    """Half-close a stream (after the acknowledgements queued), let the node end it
    within ``flush_s``, then cancel whatever is left. With ``drain``, read and drop
    what the node still sends meanwhile (only when no consumer is reading)."""
    requests.put_nowait(None)
    if not call.done():
        with contextlib.suppress(TimeoutError, grpc.RpcError):
            await asyncio.wait_for(_wait_done(call, drain=drain), flush_s)
    call.cancel()


async def _wait_done(call: Any, *, drain: bool) -> None:
    """Until the call ended (reading its remaining responses if ``drain``)."""
    if drain:
        while await call.read() is not grpc.aio.EOF:
            pass
        return
    done = asyncio.Event()
    call.add_done_callback(lambda _call: done.set())
    if not call.done():
        await done.wait()
