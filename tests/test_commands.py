from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.errors import ProtocolError
from agentcast.protocol.commands import Hello, Policy, Publish, Subscribe, decode_command


def cmd(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_decodes_each_command() -> None:
    hello = decode_command(cmd(id=1, cmd="hello", client="planner"))
    assert hello == Hello(1, "planner", None, {})
    sub = decode_command(cmd(id="s", cmd="subscribe", topic="acme.>", policy="drop_oldest"))
    assert sub == Subscribe("s", "acme.>", Policy.DROP_OLDEST, "key")
    pub = decode_command(
        cmd(id=3, cmd="publish", topic="acme.x", payload=[1], headers={"k": "v"}, lamport=4)
    )
    assert isinstance(pub, Publish)
    assert (pub.topic, pub.payload, pub.headers, pub.lamport, pub.ack) == (
        "acme.x",
        [1],
        {"k": "v"},
        4,
        True,
    )


@pytest.mark.parametrize(
    ("frame", "code", "command_id"),
    [
        (b"{", "bad_json", None),
        (b"[1]", "bad_json", None),
        (cmd(id=1), "missing_field", 1),
        (cmd(id=2, cmd="explode"), "unknown_command", 2),
        (cmd(id=3, cmd="subscribe"), "missing_field", 3),
        (cmd(id=4, cmd="subscribe", topic="a..b"), "invalid_topic", 4),
        (cmd(id=5, cmd="subscribe", topic="a", policy="whatever"), "bad_request", 5),
        (cmd(id=6, cmd="subscribe", topic="a", since={"seq": 1}), "bad_request", 6),
        (cmd(id=6, cmd="subscribe", topic="a.*", last=3), "unsupported", 6),
        (cmd(id=6, cmd="subscribe", topic="a", last=0), "bad_request", 6),
        (cmd(id=6, cmd="subscribe", topic="a", last=3, since_time="x"), "bad_request", 6),
        (cmd(id=6, cmd="subscribe", topic="a.*", group="g"), "unsupported", 6),
        (cmd(id=6, cmd="subscribe", topic="a", group="g h"), "bad_request", 6),
        (cmd(id=6, cmd="ack", topic="a", group="g", seq=0), "bad_request", 6),
        (cmd(id=6, cmd="nack", topic="a", group="g"), "missing_field", 6),
        (cmd(id=6, cmd="hello", resume={"a.*": {"epoch": "e", "seq": 1}}), "invalid_topic", 6),
        (cmd(id=6, cmd="hello", resume={"a": {"epoch": "e", "seq": -1}}), "bad_request", 6),
        (cmd(id=7, cmd="publish", topic="a.*"), "wildcard_publish", 7),
        (cmd(id=8, cmd="publish", topic="a.>"), "wildcard_publish", 8),
        (cmd(id=9, cmd="publish"), "missing_field", 9),
        (cmd(id=10, cmd="publish", topic="a", headers={"k": 1}), "bad_request", 10),
        (cmd(id=11, cmd="publish", topic="a", headers=[1]), "bad_request", 11),
        (cmd(id=12, cmd="publish", topic="a", ack="yes"), "bad_request", 12),
        (cmd(id=13, cmd="publish", topic="a", lamport=-1), "bad_request", 13),
        (cmd(id=14, cmd="hello", protocol=2), "unsupported_protocol", 14),
        (cmd(id=[1], cmd="ping"), "bad_request", None),
        (cmd(id=15, cmd="unsubscribe", topic=5), "invalid_topic", 15),
        (cmd(id=16, cmd="hello", client=3), "bad_request", 16),
        (cmd(id=17, cmd="publish", topic="a", idempotency_key="k\x00"), "bad_request", 17),
        (cmd(id=18, cmd="publish", topic="a", headers={"k": "v\x00"}), "bad_request", 18),
    ],
)
def test_bad_commands_get_stable_codes(frame: bytes, code: str, command_id: object) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_command(frame)
    assert info.value.code == code
    assert info.value.command_id == command_id
    assert info.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(st.binary(max_size=200))
def test_decoder_never_crashes_on_bytes(data: bytes) -> None:
    try:
        decode_command(data)
    except ProtocolError as exc:
        assert exc.code and exc.message


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "cmd",
                "topic",
                "payload",
                "headers",
                "ack",
                "policy",
                "client",
                "lamport",
                "since",
            ]
        ),
        json_values,
    )
)
def test_decoder_never_crashes_on_objects(fields: dict[str, object]) -> None:
    try:
        decode_command(orjson.dumps(fields))
    except ProtocolError as exc:
        assert exc.code and exc.message
