"""The web UI on ``flow8 serve --streams`` in a real browser (Playwright driving Debian's Chromium): a
play a real streams worker ran shows its timeline, its event log and its audit verdict, all read off
the events topic, as on the embedded backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.audit import chromium
from tests.conformance.streams_harness import WorkerGroup

from .conftest import HELLO
from .server import Server, make_key, serving, streams_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser

BINARY = chromium.find()
try:
    import playwright.sync_api as pw
except ImportError:  # pragma: no cover - the test extra installs it
    pw = None  # type: ignore[assignment]
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.mongo,
    pytest.mark.slow,
    pytest.mark.skipif(
        BINARY is None,
        reason="no Chromium found: install Debian's chromium (apt-get install chromium) or name one in $FLOW8_CHROMIUM",
    ),
    pytest.mark.skipif(pw is None, reason="Playwright is not installed: pip install -e '.[test]'"),
]
WAIT_MS = 20_000  # a guard for a page that never gets there, not a synchronisation


@pytest.fixture(scope="module")
def served(group: WorkerGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    cwd = tmp_path_factory.mktemp("ui-browser-streams")
    env = streams_env(group)
    key = make_key("--mongodb", company="acme", cwd=cwd, env=env)
    with serving("--streams", cwd=cwd, env=env) as server:
        yield server, key


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert BINARY is not None and pw is not None
    with pw.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=BINARY, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield launched
        launched.close()


def test_a_streams_play_shows_its_timeline_events_and_verdict(served: tuple[Server, str], browser: Browser) -> None:
    server, key = served
    with server.client(key) as client:
        assert client.put("/v1/flows/hello", json=HELLO).status_code in (200, 201)
        play_id = client.post("/v1/plays", json={"flow": "hello"}).json()["play_id"]
        assert client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 60}).json()["status"] == "succeeded"
        events = client.get(f"/v1/plays/{play_id}/events").json()["items"]
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{server.url}/ui/")
        page.fill("#key", key)
        page.click("#sign-in-form button[type=submit]")
        page.goto(f"{server.url}/ui/#/plays/{play_id}")
        pw.expect(page.locator("#verdict")).to_have_attribute("data-verdict", "ok")
        pw.expect(page.locator("#timeline svg.timeline")).to_have_attribute("data-play", play_id)
        assert page.locator("#timeline g.lane").count() == len(HELLO["flowlets"])
        rows = page.locator("#events tbody tr")
        assert rows.count() == len(events) and rows.last.get_attribute("data-type") == "PlayCompleted"
    finally:
        context.close()
    assert errors == []
