"""The audit report in a real browser (headless Chromium): the DOM after load has a chart per play
and a bar per attempt with its outcome, the hostile error message is text that never ran, the
page's own filter script ran under its CSP, the page requested nothing, and its screenshot is a
real, non-blank picture (kept in ``.artifacts/`` for the notes and CI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.audit import chromium
from tests.audit.conftest import flow8
from tests.audit.dom import parse
from tests.audit.report_plays import COMPANY, FLOWS, HOSTILE, PLAY_IDS, Recorded, recorded

__all__ = ["recorded"]  # the session fixture, used by name

BINARY = chromium.find()
pytestmark = pytest.mark.skipif(
    BINARY is None,
    reason="no Chromium found: install Debian's chromium (apt-get install chromium; scripts/test does as root) "
    "or name one in $FLOW8_CHROMIUM",
)
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
SIZE = (1100, 1500)
# each play's attempts in the order drawn (flowlets in the flow's order), by outcome class
ATTEMPTS = {
    "retries": ["failed", "failed", "succeeded", "succeeded"],
    "failing": ["failed", "failed", "cancelled"],
    "timeout": ["timed_out"],
    "channel": ["succeeded", "succeeded", "succeeded"],
}


@pytest.fixture(scope="module")
def report(recorded: Recorded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report-browser")
    result = flow8(
        "audit", "export", "--db", recorded.db, "--company", COMPANY, "--out", root / "acme.jsonl.gz",
        "--public-key", recorded.public, "--html", root / "report.html", cwd=root,
    )  # fmt: skip
    assert result.code == 0, result
    return root / "report.html"


@pytest.fixture
def browser(tmp_path: Path) -> chromium.Chromium:
    assert BINARY is not None
    return chromium.Chromium(BINARY, tmp_path)


def test_the_dom_has_a_chart_per_play_and_a_bar_per_attempt(report: Path, browser: chromium.Chromium) -> None:
    page = parse(browser.dom(report))
    plays = {a.attrs["data-play"]: a for a in page.find("article", "play")}
    assert set(plays) == set(PLAY_IDS.values())
    for name, outcomes in ATTEMPTS.items():
        (chart,) = plays[PLAY_IDS[name]].find("svg", "timeline")
        attempts = chart.find("g", "attempt")
        assert [g.attrs["data-outcome"] for g in attempts] == outcomes, name
        for g in attempts:
            (bar,) = g.find("rect", "bar")
            assert g.attrs["data-outcome"] in g.classes and float(bar.attrs["width"]) >= 2
        assert len(chart.find("g", "lane")) == len(FLOWS[name].flowlets)
    assert len(page.find("svg", "legend")) == 1


def test_hostile_text_is_shown_and_never_runs_while_the_pages_own_script_does(
    report: Path, browser: chromium.Chromium, tmp_path: Path
) -> None:
    net_log = tmp_path / "net.json"
    page = parse(browser.dom(report, net_log=net_log))
    (body,) = page.find("body")
    assert "data-pwned" not in body.attrs  # neither the <script> nor the onerror of the message ran
    assert not page.find("img") and len(page.find("script")) == 1
    (failing,) = page.find("article", data_play=PLAY_IDS["failing"])
    assert HOSTILE in failing.find("p", "error")[0].text
    (nav,) = page.find("nav", id="filter")
    assert "hidden" not in nav.attrs  # the page's script ran (its hash is in the CSP) ...
    assert nav.find("output")[0].text == f"{len(FLOWS)} of {len(FLOWS)} charted plays shown"  # ... and filtered
    assert chromium.page_requests(net_log) == []


def test_the_request_check_sees_a_page_that_fetches(browser: chromium.Chromium, tmp_path: Path) -> None:
    """The control for 'the page requested nothing': a page that does request is seen."""
    page = tmp_path / "fetches.html"
    page.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/pixel.png"><link rel="stylesheet" href="x.css">')
    net_log = tmp_path / "net.json"
    browser.dom(page, net_log=net_log)
    assert chromium.page_requests(net_log) == ["http://127.0.0.1:9/pixel.png"]


def test_the_screenshot_is_a_real_picture_of_the_report(report: Path, browser: chromium.Chromium) -> None:
    shot = browser.screenshot(report, browser.workdir / "audit-report.png", *SIZE)
    blank_page = browser.workdir / "blank.html"
    blank_page.write_text("<!DOCTYPE html><title>blank</title>")
    blank = chromium.read_png(browser.screenshot(blank_page, browser.workdir / "blank.png", *SIZE))
    png = chromium.read_png(shot)
    assert (png.width, png.height) == SIZE == (blank.width, blank.height)
    # a white page is a few byte values once decoded; text, bars and colours are many
    assert len(set(blank.pixels)) < 10 < 100 < len(set(png.pixels)), (len(set(blank.pixels)), len(set(png.pixels)))
    assert shot.stat().st_size > 4 * (browser.workdir / "blank.png").stat().st_size
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "audit-report.png")
