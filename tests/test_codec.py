"""Tests of kyodo.codec: canonical CBOR of plain values and registered records.

``tests/vectors/codec.json`` holds language-neutral known-answer cases (RFC 8949
appendix A examples, boundaries of every integer width, map key ordering) and
rejection cases (non-canonical forms, floats, tags, bad keys, truncation, depth,
range); :func:`test_vector` replays every one of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NewType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kyodo.codec as codec
from kyodo.codec import (
    MAX_DEPTH,
    CodecError,
    DecodeError,
    EncodeError,
    NonCanonicalError,
    decode,
    decode_record,
    decode_value,
    encode,
    encode_value,
    record,
    record_class,
    to_plain,
)
from kyodo.consensus import StatusMessage
from kyodo.ledger import Block, BlockHeader, CommitSignature, Event, TxResult

VECTORS_PATH = Path(__file__).parent / "vectors" / "codec.json"

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

# -- test records (tags 9001+ are unused by Kyodo) ----------------------------------------

Amount = NewType("Amount", int)


@record(9001)
@dataclass(frozen=True, slots=True, kw_only=True)
class Leaf:
    n: int
    data: bytes
    text: str
    flag: bool


@record(9002, version=3)
@dataclass(frozen=True, slots=True, kw_only=True)
class Tree:
    leaf: Leaf
    maybe: Leaf | None
    leaves: tuple[Leaf, ...]
    by_name: dict[str, Leaf]
    counts: dict[str, int]
    anything: Any
    opt_int: int | None
    amount: Amount
    names: tuple[str, ...]


@record(9003)
@dataclass(frozen=True, slots=True, kw_only=True)
class Positive:
    value: int

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError("value must be positive")


def leaf(n: int = 1, *, flag: bool = False) -> Leaf:
    return Leaf(n=n, data=bytes([n % 256]) * 3, text=f"leaf{n}", flag=flag)


def tree(**overrides: Any) -> Tree:
    fields: dict[str, Any] = {
        "leaf": leaf(1),
        "maybe": leaf(2, flag=True),
        "leaves": (leaf(3), leaf(4)),
        "by_name": {"b": leaf(5), "a": leaf(6)},
        "counts": {"x": 1, "yy": -2},
        "anything": {"list": [1, b"\x00", None, True], "nested": {"s": "t"}},
        "opt_int": 7,
        "amount": Amount(2**64 - 1),
        "names": ("p", "q"),
    }
    fields.update(overrides)
    return Tree(**fields)


def same(a: Any, b: Any) -> bool:
    """Structural equality that also compares types (True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- plain values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        INT_MIN,
        INT_MAX,
        b"",
        b"\x00\xff" * 100,
        "",
        "k\u00fcrz \U0001f600",
        [],
        [1, [2, [3, []]]],
        {},
        {"b": 1, "a": [True, None, b"x"], "": {"nested": {}}},
        ["x" * 70_000],
    ],
)
def test_plain_values_round_trip(value: Any) -> None:
    data = encode_value(value)
    assert same(decode_value(data), value)
    assert encode(value) == data


def test_map_encoding_ignores_insertion_order() -> None:
    forward = {"a": 1, "bb": 2, "c": 3, "dd": 4}
    backward = dict(reversed(list(forward.items())))
    assert encode_value(forward) == encode_value(backward)
    # shorter keys first, then bytewise: "a" < "c" < "bb" < "dd"
    assert encode_value(forward).hex() == "a46161016163036262620262646404"


def _plain_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=INT_MIN, max_value=INT_MAX)
        | st.binary(max_size=40)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=8), children, max_size=5)
        ),
        max_leaves=25,
    )


@PROPERTY
@given(_plain_values())
def test_random_plain_values_round_trip(value: Any) -> None:
    data = encode_value(value)
    decoded = decode_value(data)
    assert same(decoded, value)
    assert encode_value(decoded) == data


@PROPERTY
@given(st.dictionaries(st.text(max_size=6), st.integers(-5, 5), min_size=2, max_size=8))
def test_map_keys_are_sorted_by_encoded_bytes(value: dict[str, int]) -> None:
    data = encode_value(value)
    decoded = decode_value(data)
    encoded_keys = [encode_value(k) for k in decoded]  # dict keeps the wire order
    assert encoded_keys == sorted(encoded_keys)


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        float("nan"),
        [1, 0.5],
        {"a": 1.5},
        INT_MAX + 1,
        INT_MIN - 1,
        [2**100],
        (1, 2),
        {1: "x"},
        {b"k": 1},
        {"a": {None: 1}},
        {1, 2},
        bytearray(b"x"),
        object(),
        leaf(),
    ],
    ids=repr,
)
def test_encode_value_refuses_values_outside_the_model(value: Any) -> None:
    with pytest.raises(EncodeError):
        encode_value(value)


def _nested_list(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_depth_limit() -> None:
    assert decode_value(encode_value(_nested_list(MAX_DEPTH))) == _nested_list(MAX_DEPTH)
    with pytest.raises(EncodeError):
        encode_value(_nested_list(MAX_DEPTH + 1))
    with pytest.raises(DecodeError):
        decode_value(bytes.fromhex("81" * (MAX_DEPTH + 1) + "00"))
    # far deeper than any recursion limit: still a DecodeError, never a crash
    with pytest.raises(DecodeError):
        decode_value(b"\x81" * 200_000 + b"\x00")
    with pytest.raises(DecodeError):
        decode_value(b"\xa1\x61\x61" * 100_000 + b"\x00")


def test_max_size() -> None:
    data = encode_value(["x" * 1000])
    assert decode_value(data, max_size=len(data)) == ["x" * 1000]
    with pytest.raises(DecodeError, match="exceeds"):
        decode_value(data, max_size=len(data) - 1)
    encoded = encode(leaf())
    with pytest.raises(DecodeError):
        decode_record(Leaf, encoded, max_size=len(encoded) - 1)
    with pytest.raises(DecodeError):
        decode(encoded, max_size=len(encoded) - 1)
    assert decode(encoded, max_size=len(encoded)) == leaf()


@pytest.mark.parametrize("data", [bytearray(b"\x01"), memoryview(b"\x01"), "01", None])
def test_decode_value_requires_bytes(data: Any) -> None:
    with pytest.raises(DecodeError):
        decode_value(data)


# -- vectors -----------------------------------------------------------------------------


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"hex"}:
            return bytes.fromhex(value["hex"])
        if value.keys() == {"int"}:
            return int(value["int"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())["cases"]
    return cases


CASES = _load_cases()


def test_vectors_cover_both_kinds() -> None:
    valid = [c for c in CASES if "canonical_hex" in c]
    invalid = [c for c in CASES if "error" in c]
    assert len(valid) >= 40
    assert len(invalid) >= 50
    assert len(valid) + len(invalid) == len(CASES)
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case: dict[str, Any]) -> None:
    if "canonical_hex" in case:
        value = _from_json(case["value"])
        data = bytes.fromhex(case["canonical_hex"])
        assert encode_value(value).hex() == case["canonical_hex"]
        assert same(decode_value(data), value)
    else:
        error = {"DecodeError": DecodeError, "NonCanonicalError": NonCanonicalError}[case["error"]]
        with pytest.raises(error):
            decode_value(bytes.fromhex(case["hex"]))


# -- fuzzing -----------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None, database=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    try:
        value = decode_value(data)
    except CodecError:
        return
    assert encode_value(value) == data  # whatever decodes is canonical


@PROPERTY
@given(_plain_values(), st.data())
def test_mutated_encodings_raise_only_codec_errors(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode_value(value))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    if kind == "flip":
        encoded[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del encoded[pos:]
    else:
        encoded[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    for decoder in (decode_value, decode, lambda b: decode_record(Tree, b)):
        try:
            decoded = decoder(bytes(encoded))
        except CodecError:
            continue
        if decoder is decode_value:
            assert encode_value(decoded) == bytes(encoded)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=48))
def test_random_bytes_decode_as_records_raise_only_codec_errors(data: bytes) -> None:
    for tag in (b"\x19\x23\x29", b"\x19\x23\x2a", b"\x14", b"\x16"):  # 9001, 9002, 20, 22
        for count in (4, 6, 7, 11):
            candidate = bytes([0x80 + count]) + tag + b"\x01" + data
            try:
                decoded = decode(candidate)
            except CodecError:
                continue
            assert encode(decoded) == candidate  # a decoded record re-encodes to its bytes


# -- records -----------------------------------------------------------------------------


def test_record_round_trip_with_every_field_kind() -> None:
    value = tree()
    data = encode(value)
    assert decode(data) == value
    assert decode_record(Tree, data) == value
    decoded = decode_record(Tree, data)
    assert type(decoded.leaves) is tuple
    assert type(decoded.names) is tuple
    assert type(decoded.maybe) is Leaf
    assert decoded.by_name == {"a": leaf(6), "b": leaf(5)}


@pytest.mark.parametrize(
    "overrides",
    [
        {"maybe": None, "opt_int": None, "anything": None},
        {"leaves": (), "by_name": {}, "counts": {}, "names": ()},
        {"anything": [[[]]]},
        {"anything": 5},
        {"amount": Amount(0)},
    ],
    ids=["nones", "empties", "nested-any", "int-any", "zero-amount"],
)
def test_record_round_trip_variants(overrides: dict[str, Any]) -> None:
    value = tree(**overrides)
    assert decode(encode(value)) == value


def test_record_layout_is_tag_version_then_fields_in_order() -> None:
    assert to_plain(leaf(1)) == [9001, 1, 1, b"\x01\x01\x01", "leaf1", False]
    assert to_plain(tree())[:2] == [9002, 3]
    assert encode(leaf(1)) == encode_value([9001, 1, 1, b"\x01\x01\x01", "leaf1", False])
    assert to_plain([1, "x"]) == [1, "x"]
    # StatusMessage is record 42, version 1: [42, 1, height, tip_hash]
    assert encode(StatusMessage(height=5, tip_hash=b"\x01\x02")).hex() == "84182a0105420102"


def test_record_registry() -> None:
    assert record_class(9001) is Leaf
    assert record_class(42) is StatusMessage
    assert record_class(987_654) is None

    @dataclass(frozen=True)
    class Other:
        x: int

    with pytest.raises(TypeError, match="already used"):
        record(9001)(Other)
    with pytest.raises(TypeError, match="dataclass"):
        record(9999)(int)
    assert record(9001)(Leaf) is Leaf  # re-registering the same class is harmless


def test_ledger_records_round_trip() -> None:
    header = BlockHeader(
        chain_id="c",
        height=3,
        prev_hash=b"\x01" * 32,
        txs_root=b"\x02" * 32,
        results_root=b"\x03" * 32,
        state_root=b"\x04" * 32,
        timestamp_ms=1_700_000_000_000,
        proposer="n1",
        epoch=0,
        config_hash=bytes(32),
    )
    result = TxResult(
        tx_id=b"\x05" * 32,
        status=0,
        result={"ok": [1, 2]},
        message="",
        events=(Event(contract="c", name="e", payload={"k": b"v"}),),
    )
    block = Block(
        header=header,
        txs=(),
        results=(result,),
        certificate=(CommitSignature(signer="n1", signature=b"\x06" * 64),),
        config=None,
    )
    assert decode(encode(block)) == block
    assert decode_record(Block, encode(block)) == block


def _plain(value: Any) -> bytes:
    return encode_value(value)


LEAF_PLAIN = [9001, 1, 1, b"", "t", False]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (_plain([9001, 1, True, b"", "t", False]), "Leaf.n"),  # bool is not int
        (_plain([9001, 1, 1, b"", "t", 1]), "Leaf.flag"),  # int is not bool
        (_plain([9001, 1, 1, "x", "t", False]), "Leaf.data"),
        (_plain([9001, 1, 1, b"", b"t", False]), "Leaf.text"),
        (_plain([9001, 1, None, b"", "t", False]), "Leaf.n"),
        (_plain([9001, 1, [1], b"", "t", False]), "Leaf.n"),
    ],
    ids=["bool-for-int", "int-for-bool", "str-for-bytes", "bytes-for-str", "none", "list"],
)
def test_wrong_field_type_names_the_field(data: bytes, path: str) -> None:
    for decoder in (decode, lambda b: decode_record(Leaf, b)):
        with pytest.raises(DecodeError) as info:
            decoder(data)
        assert info.value.path == path
        assert str(info.value).startswith(path + ":")


def _tree_plain(**overrides: Any) -> list[Any]:
    plain = to_plain(tree())
    names = [
        "leaf",
        "maybe",
        "leaves",
        "by_name",
        "counts",
        "anything",
        "opt_int",
        "amount",
        "names",
    ]
    for name, value in overrides.items():
        plain[2 + names.index(name)] = value
    return plain


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"leaf": None}, "Tree.leaf"),
        ({"leaf": LEAF_PLAIN[:-1]}, "Tree.leaf"),
        ({"maybe": [9001, 1, 1, b"", "t", "no"]}, "Tree.maybe.flag"),
        ({"leaves": {"a": LEAF_PLAIN}}, "Tree.leaves"),
        ({"leaves": [LEAF_PLAIN, 5]}, "Tree.leaves[1]"),
        ({"leaves": [LEAF_PLAIN, [9001, 1, False, b"", "t", False]]}, "Tree.leaves[1].n"),
        ({"by_name": [LEAF_PLAIN]}, "Tree.by_name"),
        ({"by_name": {"k": [9003, 1, 5]}}, "Tree.by_name.k"),
        ({"counts": {"x": True}}, "Tree.counts.x"),
        ({"opt_int": "7"}, "Tree.opt_int"),
        ({"amount": False}, "Tree.amount"),
        ({"amount": None}, "Tree.amount"),
        ({"names": ["a", 1]}, "Tree.names[1]"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_wrong_nested_field_type_names_the_path(overrides: dict[str, Any], path: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(_plain(_tree_plain(**overrides)))
    assert info.value.path == path


@pytest.mark.parametrize(
    ("plain", "message"),
    [
        ([987_654, 1], "unknown record tag"),
        ([9001, 2, 1, b"", "t", False], "version"),
        ([9001, True, 1, b"", "t", False], "version"),
        ([9001, 1, 1, b"", "t"], "Leaf record"),
        ([9001, 1, 1, b"", "t", False, None], "Leaf record"),
        ([9001], "not a record"),
        (["9001", 1, 1, b"", "t", False], "not a record"),
        ({"tag": 9001}, "not a record"),
        (5, "not a record"),
        ([9003, 1, -5], "positive"),
    ],
)
def test_decode_refuses_bad_records(plain: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(_plain(plain))


def test_decode_record_refuses_another_records_tag() -> None:
    with pytest.raises(DecodeError, match="expected record tag 9001"):
        decode_record(Leaf, _plain([9003, 1, 1, b"", "t", False]))
    with pytest.raises(DecodeError, match="expected a Leaf record"):
        decode_record(Leaf, encode(Positive(value=1)))
    with pytest.raises(DecodeError):
        decode_record(Leaf, _plain([True, 1, 1, b"", "t", False]))
    with pytest.raises(DecodeError):
        decode_record(Positive, _plain([9003, 1, 0]))
    assert decode_record(Positive, _plain([9003, 1, 3])) == Positive(value=3)


def test_decode_record_refuses_non_canonical_bytes() -> None:
    data = encode(leaf(1))
    # the same record with its field count written in a non-minimal form
    assert data[0] == 0x86
    with pytest.raises(NonCanonicalError):
        decode_record(Leaf, b"\x98\x06" + data[1:])
    with pytest.raises(NonCanonicalError):
        decode(data + b"\x00")


# -- encoding refuses what decoding would refuse ---------------------------------------


@pytest.mark.parametrize(
    "record_value",
    [
        Event(contract="c", name="e", payload=1.5),
        Event(contract="c", name="e", payload=[2**70]),
        Event(contract="c", name="e", payload={1: "x"}),
        TxResult(tx_id=b"", status=True, result=None, message="", events=()),  # type: ignore[arg-type]
        Event(contract="c", name="e", payload=Event(contract="c", name="f", payload=None)),
    ],
    ids=["float", "bignum", "int-key", "bool-status", "nested-record-in-any"],
)
def test_encode_record_refuses_values_outside_the_model(record_value: Any) -> None:
    with pytest.raises(EncodeError):
        encode(record_value)


def test_codec_exports() -> None:
    assert issubclass(NonCanonicalError, DecodeError)
    assert issubclass(DecodeError, CodecError)
    assert issubclass(EncodeError, CodecError)
    assert codec.MAX_DEPTH == 32
