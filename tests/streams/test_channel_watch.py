"""The orchestrator's channel watchdog, on a hand-driven clock (no Kafka needed)."""

from __future__ import annotations

from datetime import UTC, datetime

from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import ChannelHeartbeat, FlowletResult, Start
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import step
from flow8_streams.runtimes.streams.channels import ChannelWatch

NOW = datetime(2024, 5, 1, tzinfo=UTC)
FLOW = FlowDefinition.model_validate(
    {
        "name": "watched",
        "flowlets": [
            {"name": "long", "module_ref": "sleep", "defer_after_ms": 0, "retry": {"max_attempts": 2, "backoff_ms": 0}},
            {"name": "quick", "module_ref": "echo"},
        ],
    }
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def started(play_id: str = "p1") -> PlayState:
    _, state = step(None, Start(play_id=play_id, company_id="acme", flow=FLOW, input={}), NOW)
    assert state is not None
    return state


def result(state: PlayState, flowlet: str, attempt: int, ok: bool) -> PlayState:
    message = FlowletResult(
        play_id=state.play_id, company_id="acme", flowlet=flowlet, attempt=attempt, ok=ok,
        started_at=NOW, ended_at=NOW,
    )  # fmt: skip
    _, after = step(state, message, NOW)
    assert after is not None
    return after


def beat(play_id: str, attempt: int = 1) -> ChannelHeartbeat:
    return ChannelHeartbeat(play_id=play_id, company_id="acme", flowlet="long", attempt=attempt)


def watch(clock: Clock) -> ChannelWatch:
    return ChannelWatch(3.0, lambda module_ref, defer_after_ms: defer_after_ms is not None, clock)


def test_a_channel_flowlet_is_watched_from_its_scheduling_and_heartbeats_keep_it_alive() -> None:
    clock = Clock()
    w = watch(clock)
    state = started()
    w.track(state, partition=4)
    assert set(w.entries) == {("p1", "long", 1)}  # "quick" runs in the executor: not watched
    clock.t += 2.9
    w.beat(beat("p1"))
    clock.t += 2.9
    assert w.overdue() == []
    clock.t += 0.1
    (key, watched), *more = w.overdue()
    assert more == [] and key == ("p1", "long", 1) and (watched.partition, watched.company_id) == (4, "acme")
    assert w.overdue() == [] and w.entries == {}  # reported once
    lost = w.lost(key, watched)
    assert (lost.ok, lost.retryable, lost.error) == (False, True, "channel_lost: no heartbeat for 3 s")


def test_a_retry_is_a_new_attempt_to_watch_and_the_end_of_the_flowlet_forgets_it() -> None:
    clock = Clock()
    w = watch(clock)
    state = started()
    w.track(state, 0)
    clock.t += 2
    state = result(state, "long", 1, ok=False)  # retried at once: attempt 2 scheduled
    w.track(state, 0)
    assert set(w.entries) == {("p1", "long", 2)} and w.entries[("p1", "long", 2)].last_seen == clock.t
    w.beat(beat("p1", attempt=1))  # a late heartbeat of the old attempt changes nothing
    assert set(w.entries) == {("p1", "long", 2)}
    state = result(state, "long", 2, ok=True)
    w.track(state, 0)
    assert w.entries == {}


def test_rescan_gives_unwatched_flowlets_a_grace_and_forgets_plays_not_owned() -> None:
    clock = Clock()
    w = watch(clock)
    mine, gone = started("mine"), started("gone")
    w.track(gone, 1)
    clock.t += 2
    w.rescan([(mine, 0)])  # after a rebalance: "mine" came to us, "gone" went
    assert set(w.entries) == {("mine", "long", 1)} and w.entries[("mine", "long", 1)].last_seen == clock.t
    clock.t += 1
    w.rescan([(mine, 0)])  # a second rescan does not restart its clock
    assert w.entries[("mine", "long", 1)].last_seen == clock.t - 1


def test_a_flowlet_this_worker_still_holds_is_never_lost_however_late_its_heartbeats() -> None:
    """A burst queues thousands of tasks for a channel and puts the completions partition, which
    carries their heartbeats, far behind its reader: the flowlets this worker's own executor holds
    are alive, and their clock starts again; one it does not hold is lost as before."""
    clock = Clock()
    w = watch(clock)
    held, elsewhere = started("held"), started("elsewhere")
    w.track(held, 0)
    w.track(elsewhere, 0)
    clock.t += 3.0
    mine = {("held", "long", 1)}
    assert [key for key, _ in w.overdue(mine.__contains__)] == [("elsewhere", "long", 1)]
    assert set(w.entries) == {("held", "long", 1)} and w.entries[("held", "long", 1)].last_seen == clock.t
    clock.t += 3.0
    mine.clear()  # its executor let go of it (the result was sent, or the worker is stopping)
    assert [key for key, _ in w.overdue(mine.__contains__)] == [("held", "long", 1)]


def test_a_flowlet_declared_lost_is_not_watched_again_by_a_rescan_while_its_result_is_on_its_way() -> None:
    """Behind a burst the orchestrator reads the channel_lost result late; until then the play
    still shows the attempt in flight, and a rescan re-watched it and failed it again, every
    timeout, flooding the partition it was behind on. Unless the result could not be sent."""
    clock = Clock()
    w = watch(clock)
    sent, unsent = started("sent"), started("unsent")
    w.rescan([(sent, 0), (unsent, 0)])
    clock.t += 3.0
    assert sorted(key for key, _ in w.overdue()) == [("sent", "long", 1), ("unsent", "long", 1)]
    w.sent_lost(("sent", "long", 1))
    w.rescan([(sent, 0), (unsent, 0)])  # both plays still show attempt 1 in flight
    assert set(w.entries) == {("unsent", "long", 1)}
    w.track(sent, 0)  # a decision on the play (another flowlet's result) does not either
    assert set(w.entries) == {("unsent", "long", 1)}
