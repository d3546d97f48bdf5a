"""The web UI in a real browser: Playwright drives Debian's Chromium against a real ``flow8 serve
--db`` whose database holds plays the embedded runtime recorded (retries, a hostile failure, a
timeout, a flowlet deferred onto a real channel), keys made with ``flow8 keys create``, and plays,
flows and KV written over the API. Every page is read from the DOM after its scripts ran; the
screenshots of the plays list, a play's timeline and a flow's DAG are kept in ``.artifacts/``."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.audit import chromium
from tests.audit.report_plays import COMPANY, FLOWS, HOSTILE, PLAY_IDS, Recorded, recorded
from tests.flow8_cli import run

from .server import Server, clean_env, make_key, serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["recorded"]  # the session fixture, used by name

BINARY = chromium.find()
try:
    import playwright.sync_api as pw
except ImportError:  # pragma: no cover - the test extra installs it
    pw = None  # type: ignore[assignment]
pytestmark = [
    pytest.mark.skipif(
        BINARY is None,
        reason="no Chromium found: install Debian's chromium (apt-get install chromium) or name one in $FLOW8_CHROMIUM",
    ),
    pytest.mark.skipif(pw is None, reason="Playwright is not installed: pip install -e '.[test]'"),
]
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
LAPTOP = {"width": 1366, "height": 800}
WAIT_MS = 20_000  # a guard for a page that never gets there, not a synchronisation
DAG = {
    "description": HOSTILE,
    "flowlets": [
        {"name": "fetch", "module_ref": "echo"},
        {"name": "parse", "module_ref": "transform", "depends_on": ["fetch"], "input": {"x": 1}},
        {"name": "enrich", "module_ref": "echo", "depends_on": ["fetch"]},
        {"name": "store", "module_ref": "noop", "depends_on": ["parse", "enrich"]},
        {"name": "notify", "module_ref": "echo", "depends_on": ["store"], "defer_after_ms": 10},
    ],
}
SLOW = {"flowlets": [{"name": "nap", "module_ref": "sleep", "input": {"seconds": 60}}]}


@dataclass
class Site:
    server: Server
    key: str  # a member key of COMPANY
    other: str  # a key of another company
    db: Path
    cwd: Path

    @property
    def ui(self) -> str:
        return f"{self.server.url}/ui/"

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.server.client(self.key) as client:
            response = client.request(method, path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()


@pytest.fixture(scope="module")
def site(recorded: Recorded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    cwd = tmp_path_factory.mktemp("ui")
    db = cwd / "flow8.db"
    with sqlite3.connect(recorded.db) as source, sqlite3.connect(db) as copy:
        source.backup(copy)  # the recorded plays, in a file of this module's own
    source.close()
    copy.close()
    env = clean_env(FLOW8_LOG_LEVEL="info")
    key = make_key("--db", db, company=COMPANY, cwd=cwd, env=env)
    other = make_key("--db", db, company="globex", cwd=cwd, env=env)
    with serving("--db", db, cwd=cwd, env=env) as server:
        site = Site(server, key, other, db, cwd)
        site.api("PUT", "/v1/flows/pipeline", json=DAG)
        site.api("PUT", "/v1/flows/slow", json=SLOW)
        site.api("POST", "/v1/plays", json={"flow": "pipeline", "input": {"note": HOSTILE}, "play_id": "hostile-input"})
        site.api("GET", "/v1/plays/hostile-input/wait", params={"timeout": 30})
        with server.client(other) as client:  # another company's play and key, never shown
            assert client.put("/v1/flows/theirs", json=SLOW).status_code == 201
            assert client.post("/v1/plays", json={"flow": "theirs", "play_id": "globex-play"}).status_code == 202
        yield site


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert BINARY is not None and pw is not None
    with pw.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=BINARY, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )  # Chromium's sandbox refuses root
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    """A fresh tab; when the test ends, every request it made went to the server's origin and no
    script error was raised."""
    context = browser.new_context(viewport=LAPTOP)
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    requests: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda r: requests.append(r.url))
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert requests, "the page made no request at all"
    strays = [url for url in requests if not url.startswith(site.server.url + "/")]
    assert strays == [], strays
    assert errors == []


def sign_in(page: Page, site: Site, key: str | None = None) -> None:
    page.goto(site.ui)
    page.fill("#key", key or site.key)
    page.click("#sign-in-form button[type=submit]")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.write_bytes(page.screenshot(full_page=True))  # with path=, Playwright writes from a thread of its own
    png = chromium.read_png(shot)
    assert png.width == LAPTOP["width"] and len(set(png.pixels)) > 100  # a picture, not a blank page


def test_a_wrong_key_shows_the_sign_in_with_the_servers_reason(page: Page, site: Site) -> None:
    sign_in(page, site, "f8k_" + "0" * 16 + "_" + secrets.token_urlsafe(32))
    error = page.locator("#sign-in-error")
    pw.expect(error).to_contain_text("That key was refused")
    assert page.locator("#main").is_hidden() and page.locator("#nav").is_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    page.fill("#key", "not a key at all")
    page.click("#sign-in-form button[type=submit]")
    pw.expect(error).to_contain_text("not Bearer and a flow8 API key")


def test_the_plays_list_shows_the_plays_and_a_new_one_without_a_reload(page: Page, site: Site) -> None:
    sign_in(page, site)
    rows = page.locator("#plays tbody tr[data-play]")
    pw.expect(page.locator(f"tr[data-play='{PLAY_IDS['retries']}']")).to_be_visible()
    shown = {r.get_attribute("data-play"): r.get_attribute("data-status") for r in rows.all()}
    expected = {PLAY_IDS["retries"]: "succeeded", PLAY_IDS["failing"]: "failed", PLAY_IDS["timeout"]: "failed"}
    assert {p: shown.get(p) for p in expected} == expected
    assert "globex-play" not in shown  # another company's play
    first = rows.first.locator("td")
    assert first.nth(3).inner_text().endswith("ago") and first.nth(4).inner_text()
    # the key is in this tab's sessionStorage only: not in the URL, not in a cookie
    assert page.evaluate("sessionStorage.getItem('flow8.key')") == site.key
    assert site.key not in page.url and page.context.cookies() == []
    screenshot(page, "ui-plays.png")
    started = site.api("POST", "/v1/plays", json={"flow": "slow", "play_id": "live-" + secrets.token_hex(4)})
    row = page.locator(f"tr[data-play='{started['play_id']}']")
    pw.expect(row).to_have_attribute("data-status", "running")  # the next poll brings it
    site.api("POST", f"/v1/plays/{started['play_id']}/cancel")
    pw.expect(row).to_have_attribute("data-status", "cancelled")


def test_the_filters_narrow_the_list(page: Page, site: Site) -> None:
    sign_in(page, site)
    pw.expect(page.locator("#plays tbody tr[data-play]").first).to_be_visible()
    page.select_option("#filter-status", "failed")
    page.fill("#filter-flow", "failing")
    page.click("#plays-filters button[type=submit]")
    pw.expect(page.locator("#plays tbody tr[data-play]")).to_have_count(1)
    assert page.locator("#plays tbody tr").get_attribute("data-play") == PLAY_IDS["failing"]
    assert "status=failed" in page.url and "flow=failing" in page.url


def test_pages_walk_the_list_with_the_apis_cursor(page: Page, site: Site) -> None:
    every = [p["play_id"] for p in site.api("GET", "/v1/plays", params={"limit": 500})["items"]]
    assert len(every) >= 5
    sign_in(page, site)
    page.goto(f"{site.ui}#/plays?limit=2")
    rows = page.locator("#plays tbody tr[data-play]")
    seen: list[str | None] = []
    pages = 0
    while True:
        pages += 1
        pw.expect(page.locator("#plays-page")).to_have_text(f"page {pages}")
        seen += [r.get_attribute("data-play") for r in rows.all()]
        if page.locator("#older").is_disabled():
            break
        page.click("#older")
    assert seen[: len(every)] == every  # newest first, each once (new plays may start meanwhile)
    assert pages >= 3
    page.click("#newer")
    pw.expect(page.locator("#plays-page")).to_have_text(f"page {pages - 1}")


def test_a_play_page_shows_a_bar_per_attempt_its_events_and_the_audit_verdict(page: Page, site: Site) -> None:
    sign_in(page, site)
    events = site.api("GET", f"/v1/plays/{PLAY_IDS['retries']}/events")["items"]
    page.goto(f"{site.ui}#/plays/{PLAY_IDS['retries']}")
    pw.expect(page.locator("#verdict")).to_have_attribute("data-verdict", "ok")
    chart = page.locator("#timeline svg.timeline")
    pw.expect(chart).to_have_attribute("data-play", PLAY_IDS["retries"])
    outcomes = [g.get_attribute("data-outcome") for g in chart.locator("g.attempt").all()]
    assert outcomes == ["failed", "failed", "succeeded", "succeeded"]
    assert chart.locator("g.lane").count() == len(FLOWS["retries"].flowlets)
    assert chart.locator("line.wait").count() == 2  # the two retry waits
    assert page.locator("#timeline svg.legend").count() == 1
    assert page.locator("#events tbody tr").count() == len(events)
    assert page.locator("#events tbody tr").last.get_attribute("data-type") == "PlayCompleted"
    assert page.locator("#cancel").is_disabled()  # it has ended
    assert page.locator("#flowlets tr[data-flowlet='flaky'] td.num").inner_text() == "3"
    screenshot(page, "ui-play-timeline.png")


def test_a_channel_play_shows_its_deferred_attempt_on_the_channel(page: Page, site: Site) -> None:
    sign_in(page, site)
    page.goto(f"{site.ui}#/plays/{PLAY_IDS['channel']}")
    deferred = page.locator("#timeline g.lane[data-flowlet='deferred'] g.attempt")
    pw.expect(deferred).to_have_class("attempt succeeded channel")
    assert "on channel 127.0.0.1:" in deferred.locator("title").first.text_content()
    assert deferred.locator("line.queued").count() == 1  # the defer before it ran


def test_hostile_text_from_a_play_is_shown_as_text_and_never_runs(page: Page, site: Site) -> None:
    sign_in(page, site)
    page.goto(f"{site.ui}#/plays/{PLAY_IDS['failing']}")
    pw.expect(page.locator("#flowlets tr[data-flowlet='bad'] td.error")).to_contain_text(HOSTILE)
    assert HOSTILE in page.locator("#timeline g.lane[data-flowlet='bad'] title").all_text_contents()[-1]
    page.goto(f"{site.ui}#/plays/hostile-input")
    pw.expect(page.locator("#input")).to_contain_text(json.dumps(HOSTILE))  # pretty JSON, as text
    pw.expect(page.locator("#output")).to_contain_text("note")
    page.goto(f"{site.ui}#/flows/pipeline")
    pw.expect(page.locator("#dag svg.dag")).to_be_visible()
    pw.expect(page.locator("#flow-description")).to_have_text(HOSTILE)  # a flow's description
    # neither the <script> nor the onerror of the text ran, and no element came of it
    assert page.evaluate("document.body.dataset.pwned") is None
    assert page.locator("main img, main script").count() == 0


def test_cancel_stops_a_running_play_after_a_confirmation(page: Page, site: Site) -> None:
    play = site.api("POST", "/v1/plays", json={"flow": "slow", "play_id": "to-cancel-" + secrets.token_hex(4)})
    sign_in(page, site)
    page.goto(f"{site.ui}#/plays/{play['play_id']}")
    cancel = page.locator("#cancel")
    pw.expect(cancel).to_be_enabled()
    attempt = page.locator("#timeline g.lane[data-flowlet='nap'] g.attempt")
    pw.expect(attempt).to_have_attribute("data-outcome", "running")
    assert page.locator("#output").inner_text() == "(running)"
    asked: list[str] = []

    def answer(dialog: pw.Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)
    cancel.click()
    pw.expect(page.locator("#facts [data-status]").first).to_have_attribute("data-status", "cancelled")
    pw.expect(cancel).to_be_disabled()
    pw.expect(attempt).to_have_attribute("data-outcome", "cancelled")  # the timeline was refreshed too
    pw.expect(page.locator("#verdict")).to_have_attribute("data-verdict", "ok")  # read once it ended
    assert asked and play["play_id"] in asked[0]
    assert site.api("GET", f"/v1/plays/{play['play_id']}")["status"] == "cancelled"


def test_dismissing_the_confirmation_leaves_the_play_running(page: Page, site: Site) -> None:
    play = site.api("POST", "/v1/plays", json={"flow": "slow", "play_id": "kept-" + secrets.token_hex(4)})
    sign_in(page, site)
    page.goto(f"{site.ui}#/plays/{play['play_id']}")
    pw.expect(page.locator("#cancel")).to_be_enabled()
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator("#cancel").click()
    pw.expect(page.locator("#cancel")).to_be_enabled()
    assert site.api("GET", f"/v1/plays/{play['play_id']}")["status"] == "running"
    site.api("POST", f"/v1/plays/{play['play_id']}/cancel")


def test_the_flow_page_draws_the_dag_by_depth_with_each_module(page: Page, site: Site) -> None:
    sign_in(page, site)
    page.goto(f"{site.ui}#/flows")
    pw.expect(page.locator("#flows tr[data-flow='pipeline']")).to_be_visible()
    assert page.locator("#flows tr[data-flow='theirs']").count() == 0  # another company's flow
    page.click("#flows tr[data-flow='pipeline'] td a")
    dag = page.locator("#dag svg.dag")
    pw.expect(dag).to_have_attribute("data-flow", "pipeline")
    nodes = {n.get_attribute("data-flowlet"): n.get_attribute("data-module") for n in dag.locator("g.node").all()}
    assert nodes == {f["name"]: f["module_ref"] for f in DAG["flowlets"]}  # type: ignore[index]
    edges = {(e.get_attribute("data-from"), e.get_attribute("data-to")) for e in dag.locator("path.edge").all()}
    assert edges == {
        ("fetch", "parse"),
        ("fetch", "enrich"),
        ("parse", "store"),
        ("enrich", "store"),
        ("store", "notify"),
    }
    assert all(e.get_attribute("marker-end") == "url(#flow8-arrow)" for e in dag.locator("path.edge").all())
    column = {name: float(dag.locator(f"g.node[data-flowlet='{name}'] rect").get_attribute("x") or 0) for name in nodes}
    assert column["fetch"] < column["parse"] == column["enrich"] < column["store"] < column["notify"]
    assert page.locator("#flow-flowlets tr[data-flowlet='notify'] td").nth(4).inner_text() == "10 ms"
    screenshot(page, "ui-flow-dag.png")


def test_the_kv_browser_lists_reads_and_sets_a_key(page: Page, site: Site) -> None:
    prefix = "ui-" + secrets.token_hex(3)
    site.api("PUT", f"/v1/kv/{prefix}/a", json={"value": {"html": HOSTILE}})
    site.api("PUT", f"/v1/kv/{prefix}/b", json={"value": 2})
    sign_in(page, site)
    page.goto(f"{site.ui}#/kv")
    page.fill("#kv-prefix", prefix + "/")
    page.click("#kv-list-form button[type=submit]")
    keys = page.locator("#kv-keys button[data-key]")
    pw.expect(keys).to_have_count(2)
    assert [k.inner_text() for k in keys.all()] == [f"{prefix}/a", f"{prefix}/b"]
    keys.first.click()
    pw.expect(page.locator("#kv-shown-value")).to_contain_text(json.dumps(HOSTILE))
    assert page.locator("#kv-version").inner_text() == "1"
    page.fill("#kv-set-key", f"{prefix}/b")
    page.fill("#kv-set-value", "{not json")
    page.click("#kv-set-form button[type=submit]")
    pw.expect(page.locator("#kv-set-result")).to_contain_text("Not JSON, nothing sent")
    assert site.api("GET", f"/v1/kv/{prefix}/b") == {"key": f"{prefix}/b", "value": 2, "version": 1}
    page.fill("#kv-set-value", '{"n": [1, 2]}')
    page.click("#kv-set-form button[type=submit]")
    pw.expect(page.locator("#kv-set-result")).to_contain_text("to version 2")
    pw.expect(page.locator("#kv-version")).to_have_text("2")
    assert site.api("GET", f"/v1/kv/{prefix}/b") == {"key": f"{prefix}/b", "value": {"n": [1, 2]}, "version": 2}
    page.fill("#kv-key", f"{prefix}/missing")
    page.click("#kv-get-form button[type=submit]")
    pw.expect(page.locator("#kv-missing")).to_be_visible()
    assert page.evaluate("document.body.dataset.pwned") is None


def test_a_revoked_key_brings_the_sign_in_back_with_a_message(page: Page, site: Site) -> None:
    env = clean_env()
    doomed = make_key("--db", site.db, company=COMPANY, cwd=site.cwd, env=env)
    sign_in(page, site, doomed)
    pw.expect(page.locator("#plays tbody tr[data-play]").first).to_be_visible()
    key_id = doomed.split("_")[1]
    assert run("keys", "revoke", key_id, "--db", site.db, cwd=site.cwd, env=env).code == 0
    pw.expect(page.locator("#sign-in-error")).to_contain_text("Signed out: the server refused the key")
    assert page.evaluate("sessionStorage.length") == 0 and page.locator("#main").is_hidden()


def test_sign_out_forgets_the_key(page: Page, site: Site) -> None:
    sign_in(page, site)
    pw.expect(page.locator("#sign-out")).to_be_visible()
    page.click("#sign-out")
    pw.expect(page.locator("#sign-in-error")).to_have_text("Signed out.")
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    pw.expect(page.locator("#sign-in")).to_be_visible()


def test_the_pages_are_served_under_the_csp_and_the_log_never_holds_the_key(site: Site) -> None:
    with site.server.client(site.key) as client:
        index, script = client.get("/ui/"), client.get("/ui/app.js")
        assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    assert index.status_code == script.status_code == 200
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    for response in (index, script):
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in index.text.replace('<script type="module" src="app.js"></script>', "")
    log = site.server.output()
    assert "GET /ui/app.js" in log  # requests are logged ...
    assert site.key not in log and site.other not in log  # ... without their key
