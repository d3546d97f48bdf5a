"""``flow8 audit export --html``: one self-contained page, a verdict and a chart per play, every
string from the log shown as text, bounded, and its exit codes (0 clean, 1 findings, 2 bad input)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from flow8_streams.audit.report import CSP, Report
from flow8_streams.audit.timeline import build
from flow8_streams.audit.timeline_svg import render
from flow8_streams.audit.verify import PlayHistory, Summary, verify
from flow8_streams.domain.events import Event, FlowletFailed, FlowletScheduled
from tests.audit.conftest import flow8, rows, write_rows
from tests.audit.dom import Node, parse
from tests.audit.report_plays import COMPANY, FLOWS, HOSTILE, PLAY_IDS, Recorded, recorded

__all__ = ["recorded"]  # the session fixture, used by name


def _export(recorded: Recorded, tmp: Path, *extra: str, db: Path | None = None) -> tuple[int, str, Node]:
    result = flow8(
        "audit", "export", "--db", db or recorded.db, "--company", COMPANY, "--out", tmp / "acme.jsonl.gz",
        "--html", tmp / "report.html", *extra, cwd=tmp,
    )  # fmt: skip
    assert result.code in (0, 1), result
    assert "Traceback" not in result.err
    markup = (tmp / "report.html").read_text()
    return result.code, markup, parse(markup)


def _sha(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_the_report_has_a_summary_and_a_chart_per_play(recorded: Recorded, tmp_path: Path) -> None:
    code, _, page = _export(recorded, tmp_path, "--public-key", str(recorded.public))
    assert code == 0
    assert (tmp_path / "acme.jsonl.gz").stat().st_size > 0  # the archive is written as before
    plays = page.find("article", "play")
    assert sorted(p.attrs["data-play"] for p in plays) == sorted(PLAY_IDS.values())
    for play in plays:
        assert len(play.find("svg", "timeline")) == 1 and play.attrs["data-verdict"] == "ok"
        assert "anchored by a signed checkpoint" in play.find("div", "verdict")[0].text
    by_play = {p.attrs["data-play"]: p for p in plays}
    outcomes = [g.attrs["data-outcome"] for g in by_play[PLAY_IDS["retries"]].find("g", "attempt")]
    assert outcomes == ["failed", "failed", "succeeded", "succeeded"]  # flaky x3, then after
    assert len(by_play[PLAY_IDS["retries"]].find("line", "wait")) == 2
    failing = by_play[PLAY_IDS["failing"]]
    assert [g.attrs["data-outcome"] for g in failing.find("g", "attempt", "cancelled")] == ["cancelled"]
    assert len(failing.find("text", "skipped")) == 1
    assert len(by_play[PLAY_IDS["timeout"]].find("g", "attempt", "timed_out")) == 1
    (on_channel,) = by_play[PLAY_IDS["channel"]].find("g", "attempt", "channel")
    assert "on channel 127.0.0.1:" in on_channel.find("title")[0].text
    summary = page.find("section", id="summary")[0]
    counts = {tr.find("th")[0].text: tr.find("td")[0].text for tr in summary.find("tr")}
    assert counts["plays"] == str(len(FLOWS)) and counts["plays failed"] == "2" and counts["plays succeeded"] == "2"
    assert counts["verdict ok"] == str(len(FLOWS)) and counts["verdict with findings"] == "0"
    assert len(counts["public key id"]) == 16 and counts["signed checkpoints checked"] == "1"
    assert page.find("p", "banner", data_verdict="ok")


def test_hostile_text_from_the_log_is_text_and_only_the_pages_own_script_may_run(
    recorded: Recorded, tmp_path: Path
) -> None:
    _, markup, page = _export(recorded, tmp_path)
    assert "<script>document" not in markup and "<img src=x" not in markup
    assert "&lt;script&gt;document.body.dataset.pwned" in markup
    (failing,) = page.find("article", data_play=PLAY_IDS["failing"])
    assert HOSTILE in failing.find("p", "error")[0].text  # shown whole, as text
    assert any(HOSTILE in t.text for t in failing.find("title"))  # and in the failed bars' hovers
    scripts, styles = page.find("script"), page.find("style")
    assert len(scripts) == 1 and len(styles) == 1 and not page.find("img") and not page.find("link")
    (meta,) = page.find("meta", http_equiv="Content-Security-Policy")
    assert meta.attrs["content"] == CSP and "default-src 'none'" in CSP
    assert f"script-src '{_sha(scripts[0].text)}'" in CSP and f"style-src '{_sha(styles[0].text)}'" in CSP
    for node in page.iter():  # nothing to fetch: no URL in any attribute
        assert not any(k in {"src", "href"} or "://" in v for k, v in node.attrs.items()), node


def test_a_tampered_play_gets_its_finding_on_the_page_and_exit_1(recorded: Recorded, tmp_path: Path) -> None:
    db = tmp_path / "tampered.db"
    shutil.copyfile(recorded.db, db)
    docs = rows(db, PLAY_IDS["retries"])
    docs[3]["payload"]["error"] = "nothing went wrong"  # an edit without the chain recomputed
    write_rows(db, PLAY_IDS["retries"], docs)
    code, _, page = _export(recorded, tmp_path, db=db)
    assert code == 1
    (play,) = page.find("article", data_play=PLAY_IDS["retries"])
    assert play.attrs["data-verdict"] == "findings"
    (finding,) = play.find("li", data_kind="altered")
    assert "at seq 4" in finding.text
    assert page.find("p", "banner", data_verdict="findings")
    others = [p for p in page.find("article", "play") if p.attrs["data-play"] != PLAY_IDS["retries"]]
    assert {p.attrs["data-verdict"] for p in others} == {"ok"}


def test_the_report_may_not_replace_the_archive(recorded: Recorded, tmp_path: Path) -> None:
    result = flow8(
        "audit", "export", "--db", recorded.db, "--company", COMPANY, "--out", tmp_path / "a.gz",
        "--html", tmp_path / "a.gz", cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 2 and "--html" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "a.gz").exists()


def _forged(play_id: str, company: str, docs: list[dict[str, object]]) -> PlayHistory:
    return PlayHistory(play_id, company, docs)


def test_the_page_is_bounded_and_says_what_it_left_out(recorded: Recorded, tmp_path: Path) -> None:
    report = Report(COMPANY, source="test", max_charts=2, max_rows=3)
    summary = Summary()
    docs = rows(recorded.db, PLAY_IDS["retries"])
    for i in range(9):
        history = _forged(f"p{i}", COMPANY, [{**d, "play_id": f"p{i}"} for d in docs])
        verdict = verify(history)
        summary.add(verdict)
        report.add(history, verdict)
    page = parse(report.page(summary))
    assert len(page.find("article", "play")) == 2 and len(page.find("svg", "timeline")) == 2
    assert len(page.find("table", "listed")[0].find("tr")) == 1 + 3  # header and 3 plays
    (note,) = page.find("p", "left-out")
    assert note.attrs["data-left-out"] == "4" and "at most 2 plays" in note.text
    assert page.find("section", id="more")[0].find("h2")[0].text == "7 more plays, not charted"


def test_hostile_ids_and_unreadable_events_are_shown_not_obeyed(recorded: Recorded, tmp_path: Path) -> None:
    """A forged log: a play and company id carrying markup, and a play whose event is of a type
    this version does not know (written by a newer one): listed with its verdict, not charted."""
    evil = '"><svg onload=alert(1)></svg><script>alert(2)</script>'
    docs = [{**d, "play_id": evil, "company_id": evil} for d in rows(recorded.db, PLAY_IDS["channel"])]
    report = Report(evil, source=evil)
    summary = Summary()
    newer = [{**d, "type": "FlowletTeleported"} if d["seq"] == 2 else d for d in rows(recorded.db, PLAY_IDS["timeout"])]
    for history in (_forged(evil, evil, docs), _forged(PLAY_IDS["timeout"], COMPANY, newer)):
        verdict = verify(history)
        summary.add(verdict)
        report.add(history, verdict)
    markup = report.page(summary)
    page = parse(markup)
    assert "<script>alert" not in markup  # in text every < is escaped; in a quoted attribute " and > are
    assert len(page.find("script")) == 1 and not any("onload" in n.attrs for n in page.iter())
    assert page.find("span", "company")[0].text == evil and page.find("title")[0].text.endswith(evil)
    (forged,) = page.find("article", data_play=evil)
    assert forged.find("h2")[0].text == evil and len(forged.find("svg", "timeline")) == 1
    (newer_play,) = page.find("article", data_play=PLAY_IDS["timeout"])
    assert newer_play.attrs["data-verdict"] == "findings"  # the edit broke its hash
    assert not newer_play.find("svg") and "cannot be read" in newer_play.find("p", "nochart")[0].text
    out = tmp_path / "r.html"
    report.write(out, summary)
    written = out.read_text()
    assert written.startswith("<!DOCTYPE html>") and "<script>alert" not in written
    assert len(parse(written).find("article", "play")) == 2 and not list(tmp_path.glob(".r.html*"))


def test_bars_are_bounded_per_flowlet_and_per_page(recorded: Recorded) -> None:
    """A forged log with 150 attempts of one flowlet draws its latest 100 and says so; a page
    stops charting once its bars would pass ``max_bars`` and lists the rest."""
    events = recorded.events(PLAY_IDS["retries"])
    scheduled = next(e for e in events if isinstance(e, FlowletScheduled))
    failed = next(e for e in events if isinstance(e, FlowletFailed))
    many: list[Event] = [events[0]]
    for n in range(1, 151):
        for e in (scheduled, failed):
            many.append(e.model_copy(update={"payload": e.payload.model_copy(update={"attempt": n})}))
    svg = ET.tostring(render(build(many)), encoding="unicode", method="html")
    (lane,) = [g for g in parse(svg).find("g", "lane") if g.attrs["data-flowlet"] == "flaky"]
    numbers = [int(g.attrs["data-attempt"]) for g in lane.find("g", "attempt")]
    assert numbers == list(range(51, 151)) and "(+50)" in lane.find("text", "label")[0].text

    report = Report(COMPANY, source="test", max_bars=5)
    summary = Summary()
    docs = rows(recorded.db, PLAY_IDS["retries"])  # 4 attempts a play
    for i in range(3):
        history = _forged(f"p{i}", COMPANY, [{**d, "play_id": f"p{i}"} for d in docs])
        verdict = verify(history)
        summary.add(verdict)
        report.add(history, verdict)
    page = parse(report.page(summary))
    assert [a.attrs["data-play"] for a in page.find("article", "play")] == ["p0"]
    assert [tr.find("td")[0].text for tr in page.find("table", "listed")[0].find("tr")[1:]] == ["p1", "p2"]
