"""``kafka_log.gap``: when a play's events read off the topic are its whole history, held
against its projection's head (pure: no broker)."""

from __future__ import annotations

from typing import Any

from flow8_streams.retention.kafka_log import gap
from tests.audit.test_audit_mongo import _history

TOPIC = "flow8.events"


def _docs(play_id: str) -> tuple[list[dict[str, Any]], Any]:
    events, state = _history(play_id, "acme")
    return [e.model_dump(mode="json") for e in events], state


def test_a_whole_history_has_no_gap() -> None:
    docs, state = _docs("g1")
    assert gap(docs, state, TOPIC) is None


def test_each_way_a_history_is_not_whole_is_named() -> None:
    docs, state = _docs("g2")
    assert gap([], state, TOPIC) == f"no event of it found in {TOPIC}"
    assert gap(docs[1:], state, TOPIC) == f"its events in {TOPIC} begin at seq 2, not 1"
    assert gap(docs[:-1], state, TOPIC) == (
        f"its events in {TOPIC} end at seq {len(docs) - 1}, its projection's head is seq {state.seq}"
    )
    other = dict(docs[-1], hash="0" * 64)
    assert "its projection's head is seq" in str(gap([*docs[:-1], other], state, TOPIC))
    running = state.model_copy(update={"seq": len(docs) - 1, "last_hash": docs[-2]["hash"]})
    assert gap(docs[:-1], running, TOPIC) == f"its last event in {TOPIC} (seq {len(docs) - 1}) is not terminal"
