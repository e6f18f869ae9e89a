"""The envelope: timestamps and the CloudEvents 1.0 mapping."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from agentcast.protocol.envelope import Envelope, _SecondPrefix, rfc3339_now, to_cloudevent


def test_rfc3339_now_matches_the_reference_format() -> None:
    stamp = rfc3339_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    prefix = _SecondPrefix()
    for micros in (0, 1_700_000_000_123_456, 1_700_000_000_999_999, 1_700_000_001_000_000):
        expected = datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert prefix.format(micros) == f"{expected}.{micros % 1_000_000:06d}Z"


def test_cloudevents_mapping() -> None:
    envelope = Envelope(
        id="0193-id",
        topic="acme.run-42.chat",
        seq=7,
        epoch="ab12",
        time="2026-01-01T00:00:00Z",
        source="ac://client/planner",
        payload={"text": "hi"},
        headers={"traceparent": "00-abc-def-01", "X-Key": "v", "epoch": "spoof"},
        correlation_id="run-42",
        causation_id="0192-cause",
        lamport=12,
    )
    event = to_cloudevent(envelope)
    assert event["specversion"] == "1.0" and event["type"] == "agentcast.event"
    assert (event["id"], event["source"], event["subject"]) == (
        "0193-id",
        "ac://client/planner",
        "acme.run-42.chat",
    )
    assert event["sequence"] == "7" and event["epoch"] == "ab12" and event["lamport"] == 12
    assert event["correlationid"] == "run-42" and event["causationid"] == "0192-cause"
    assert event["traceparent"] == "00-abc-def-01" and event["xkey"] == "v"
    assert event["data"] == {"text": "hi"} and event["datacontenttype"] == "application/json"
    assert Envelope.from_dict(envelope.to_dict()) == envelope
