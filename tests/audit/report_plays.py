"""Plays recorded by the real embedded runtime for the timeline and report tests: retries that
succeed, a flowlet that fails for good (its sibling cancelled, its dependant skipped, its error
message hostile HTML), a timeout, and a flowlet deferred onto a real channel process."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from flow8_streams import FlowDefinition, LocalRuntime
from flow8_streams.audit.checkpoints import keygen
from flow8_streams.domain.events import Event, events_adapter
from flow8_streams.settings import Settings
from tests.channels.conftest import free_port_block

COMPANY = "acme"
# what a tenant controls and the report must show as text: a flowlet's error message
HOSTILE = (
    "<script>document.body.dataset.pwned='script'</script><img src=x onerror=\"document.body.dataset.pwned='img'\">"
)


def _flow(name: str, *flowlets: dict[str, object]) -> FlowDefinition:
    return FlowDefinition.model_validate({"name": name, "flowlets": list(flowlets)})


FLOWS = {
    "retries": _flow(
        "retries",
        {
            "name": "flaky",
            "module_ref": "fail",
            "input": {"times": 2, "message": "flaky"},
            "retry": {"max_attempts": 3, "backoff_ms": 40},
        },
        {"name": "after", "module_ref": "echo", "depends_on": ["flaky"]},
    ),
    "failing": _flow(
        "failing",
        {
            "name": "bad",
            "module_ref": "fail",
            "input": {"times": 99, "message": HOSTILE},
            "retry": {"max_attempts": 2, "backoff_ms": 10},
        },
        {"name": "slow", "module_ref": "sleep", "input": {"seconds": 30}},
        {"name": "downstream", "module_ref": "echo", "depends_on": ["bad"]},
    ),
    "timeout": _flow(
        "timeout",
        {"name": "stuck", "module_ref": "sleep", "input": {"seconds": 30}, "timeout": "150ms"},
    ),
    "channel": _flow(
        "channel",
        {"name": "deferred", "module_ref": "echo", "input": {"x": 1}, "defer_after_ms": 60},
        {"name": "inline", "module_ref": "echo", "input": {"y": 2}},
        {"name": "join", "module_ref": "echo", "depends_on": ["deferred", "inline"]},
    ),
}
PLAY_IDS = {name: f"play-{name}" for name in FLOWS}


@dataclass(frozen=True)
class Recorded:
    db: Path
    public: Path
    channel_ports: range

    def events(self, play_id: str) -> list[Event]:
        with sqlite3.connect(self.db) as conn:
            bodies = [b for (b,) in conn.execute("SELECT body FROM events WHERE play_id = ? ORDER BY seq", (play_id,))]
        conn.close()
        return events_adapter.validate_json(b"[" + b",".join(bodies) + b"]")


async def _record(db: Path, private: Path, ports: range) -> None:
    settings = Settings(
        audit_signing_key=private,
        channel_port_range=f"{ports.start}-{ports.stop - 1}",
        channel_pool_size=1,
        channel_pool_warm=1,
    )
    async with LocalRuntime.open(db, settings=settings, channels=True) as runtime:
        for name, flow in FLOWS.items():
            await runtime.run(flow, {"n": 1}, company_id=COMPANY, play_id=PLAY_IDS[name])


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    root = tmp_path_factory.mktemp("report-plays")
    private, public, _ = keygen(root / "keys")
    ports = free_port_block(2)
    asyncio.run(_record(root / "flow8.db", private, ports))
    return Recorded(root / "flow8.db", public, ports)
