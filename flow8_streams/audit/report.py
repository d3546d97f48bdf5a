"""The audit report: one self-contained HTML page (inline CSS and SVG, no URL outside it) with a
summary (plays by status, verdicts, time range, the key checked) and, per play, its verdict and
its timeline (``timeline_svg``).

Everything read from the log is hostile (company and play ids, flow names, error messages): the
page is an ``ElementTree`` serialised as HTML, so every such string is a text node or an
attribute value, escaped by the serialiser; and the page's Content-Security-Policy runs only its
own script (by hash) and loads nothing. It is bounded: ``max_charts`` plays are charted, the
next ``max_rows`` are listed in a table, the rest counted. Its script only filters; the charts
and their hovers (SVG ``<title>``) need none.
"""

from __future__ import annotations

import base64
import hashlib
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from flow8_streams.audit.run import Audit
from flow8_streams.audit.timeline import Timeline, build
from flow8_streams.audit.timeline_svg import clip, duration, element, legend, render
from flow8_streams.audit.verify import Finding, PlayHistory, Summary, Verdict
from flow8_streams.clock import parse_aware
from flow8_streams.domain.events import event_adapter

MAX_CHARTS = 500  # plays charted on one page
MAX_ROWS = 5000  # plays past the charts listed in a table; past these, only counted
MAX_FINDINGS_SHOWN = 20  # per play
MAX_PAGE_ATTEMPTS = 20_000  # bars on one page (a few hundred bytes each); a play past them is listed

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:1040px;padding:0 1rem;color:#222}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.05rem;margin:.1rem 0;word-break:break-all}
.meta{color:#555}table{border-collapse:collapse;margin:.4rem 0}
td,th{border:1px solid #ccc;padding:.15rem .6rem;text-align:left;vertical-align:top}
.banner{font-size:1.15rem;font-weight:600;padding:.4rem .8rem;border-radius:4px;display:inline-block}
.banner.ok{background:#e3f4ec}.banner.findings{background:#fbe4d8}
article.play{border-top:1px solid #ccc;padding:.6rem 0}
.verdict.ok{color:#006b4f}.verdict.findings{color:#a33f00;font-weight:600}
figure{margin:.3rem 0;overflow-x:auto}svg text{white-space:pre}
.findings li,.nochart{word-break:break-word}#filter{margin:.6rem 0}#filter>*{margin-right:.8rem}
"""

SCRIPT = """
(() => {
  const nav = document.getElementById("filter");
  const plays = Array.from(document.querySelectorAll("article.play"));
  const [text, status, only] = ["q", "status", "only"].map((n) => nav.querySelector(`[name=${n}]`));
  const shown = nav.querySelector("output");
  const apply = () => {
    const q = text.value.toLowerCase();
    let n = 0;
    for (const p of plays) {
      const keep = (!q || p.dataset.search.includes(q)) && (!status.value || p.dataset.status === status.value)
        && (!only.checked || p.dataset.verdict === "findings");
      p.hidden = !keep;
      n += keep;
    }
    shown.textContent = `${n} of ${plays.length} charted plays shown`;
  };
  for (const el of [text, status, only]) el.addEventListener("input", apply);
  nav.hidden = false;
  apply();
})();
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# nothing loads, and only this page's own style and script run
CSP = (
    f"default-src 'none'; style-src '{_sha256(CSS)}'; script-src '{_sha256(SCRIPT)}'; "
    "base-uri 'none'; form-action 'none'"
)


@dataclass(slots=True)
class _Play:
    verdict: Verdict
    timeline: Timeline | None
    why_no_chart: str | None = None


def _iso(when: datetime | None) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if when else "-"


def _at(doc: dict[str, object] | None) -> datetime | None:
    return parse_aware(doc.get("at") if doc else None)


class Report:
    """Collects plays (``add`` or ``tap``), then writes the page (``write``)."""

    def __init__(
        self,
        company: str | None,
        *,
        source: str,
        key_id: str | None = None,
        max_charts: int = MAX_CHARTS,
        max_rows: int = MAX_ROWS,
        max_bars: int = MAX_PAGE_ATTEMPTS,
    ) -> None:
        self.company = company
        self.source = source
        self.key_id = key_id
        self.max_charts = max_charts
        self.max_rows = max_rows
        self.max_bars = max_bars
        self.bars = 0  # attempts charted so far
        self.charted: list[_Play] = []
        self.listed: list[Verdict] = []
        self.left_out = 0
        self.by_status: Counter[str] = Counter()
        self.first: datetime | None = None
        self.last: datetime | None = None

    def add(self, history: PlayHistory, verdict: Verdict) -> None:
        self.by_status[verdict.status] += 1
        docs = history.documents
        for when in (_at(docs[0]) if docs else None, _at(docs[-1]) if docs else None):
            if when is not None:
                self.first = when if self.first is None else min(self.first, when)
                self.last = when if self.last is None else max(self.last, when)
        play = self._chartable(history, verdict) if len(self.charted) < self.max_charts else None
        drawn = play.timeline.attempts if play is not None and play.timeline is not None else 0
        if play is not None and self.bars + drawn <= self.max_bars:
            self.charted.append(play)
            self.bars += drawn
        elif len(self.listed) < self.max_rows:
            self.listed.append(verdict)
        else:
            self.left_out += 1

    @staticmethod
    def _chartable(history: PlayHistory, verdict: Verdict) -> _Play:
        if not history.documents:
            return _Play(verdict, None, "no events to chart")
        try:
            events = [event_adapter.validate_python(d) for d in history.documents]
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            return _Play(verdict, None, f"an event cannot be read ({problem['msg']} at {problem['loc']}): not charted")
        return _Play(verdict, build(events))

    def tap(self, histories: Iterable[PlayHistory], audit: Audit) -> Iterator[PlayHistory]:
        """``histories`` passed on unchanged, each verified by ``audit`` and added on the way."""
        for history in histories:
            self.add(history, audit.play(history))
            yield history

    # ------------------------------------------------------------ the page

    def page(self, summary: Summary) -> str:
        html = ET.Element("html", lang="en")
        head = element(html, "head")
        element(head, "meta", charset="utf-8")
        element(head, "meta", http_equiv="Content-Security-Policy", content=CSP)
        element(head, "meta", name="viewport", content="width=device-width, initial-scale=1")
        who = self.company if self.company is not None else "every company"
        element(head, "title", f"flow8 audit report: {clip(who, 80)}")
        element(head, "style", CSS)
        body = element(html, "body")
        header = element(body, "header")
        h1 = element(header, "h1", "flow8 audit report: ")
        element(h1, "span", who, class_="company")
        generated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        element(header, "p", f"Generated {generated} from {self.source}.", class_="meta")
        self._summary(body, summary)
        self._plays(body)
        element(body, "script", SCRIPT)
        text = ET.tostring(html, encoding="unicode", method="html")
        return "<!DOCTYPE html>\n" + text + "\n"

    def write(self, path: Path, summary: Summary) -> None:
        """The page at ``path``: written beside it and renamed, so it is whole or untouched."""
        data = self.page(summary).encode("utf-8", "backslashreplace")  # a lone surrogate shown, not fatal
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _summary(self, body: ET.Element, summary: Summary) -> None:
        sec = element(body, "section", id="summary")
        element(sec, "h2", "Summary")
        clean = summary.clean
        banner = "✔ no findings" if clean else f"✘ findings in {summary.with_findings} plays"
        if not clean and summary.findings:
            banner += f" and {len(summary.findings)} outside any play"
        element(
            sec,
            "p",
            banner,
            class_=f"banner {'ok' if clean else 'findings'}",
            data_verdict="ok" if clean else "findings",
        )
        table = element(sec, "table", class_="counts")
        rows: list[tuple[str, object]] = [
            ("plays", summary.plays),
            *((f"plays {status}", n) for status, n in sorted(self.by_status.items())),
            ("events", summary.events),
            ("verdict ok", summary.ok),
            ("verdict with findings", summary.with_findings),
            ("unanchored (after the last signed checkpoint)", summary.unanchored),
            ("signed checkpoints checked", summary.checkpoints if self.key_id else "none: no public key given"),
            ("public key id", self.key_id or "-"),
            ("first event", _iso(self.first)),
            ("last event", _iso(self.last)),
            (
                "time range",
                duration((self.last - self.first).total_seconds() * 1000) if self.first and self.last else "-",
            ),
        ]
        for name, value in rows:
            tr = element(table, "tr")
            element(tr, "th", name)
            element(tr, "td", str(value))
        if summary.by_kind:
            element(sec, "h3", "Findings by kind")
            kinds = element(sec, "table", class_="kinds")
            for kind, n in sorted(summary.by_kind.items()):
                tr = element(kinds, "tr")
                element(tr, "th", kind)
                element(tr, "td", str(n))
        if summary.findings:
            element(sec, "h3", "Findings outside any play")
            self._findings(sec, summary.findings)
        leg = element(body, "section", id="legend")
        element(leg, "h2", "Legend")
        leg.append(legend())
        element(leg, "p", "Hover a bar for its times, channel and error. Bars are attempts from start to end; "
            "a number after the glyph is the attempt's.", class_="meta")  # fmt: skip

    def _findings(self, parent: ET.Element, findings: list[Finding]) -> None:
        ul = element(parent, "ul", class_="findings")
        for f in findings[:MAX_FINDINGS_SHOWN]:
            where = f" at seq {f.seq}" if f.seq is not None else ""
            element(ul, "li", f"{f.kind}{where}: {clip(f.detail)}", data_kind=f.kind)
        if len(findings) > MAX_FINDINGS_SHOWN:
            element(ul, "li", f"… and {len(findings) - MAX_FINDINGS_SHOWN} more")

    def _plays(self, body: ET.Element) -> None:
        sec = element(body, "section", id="plays")
        element(sec, "h2", f"Plays ({len(self.charted)} charted)")
        nav = element(sec, "nav", id="filter", hidden="hidden")
        label = element(nav, "label", "Find ")
        element(label, "input", type="search", name="q", placeholder="play or flow")
        label = element(nav, "label", "Status ")
        select = element(label, "select", name="status")
        element(select, "option", "any", value="")
        for status in sorted(self.by_status):
            element(select, "option", status, value=status)
        label = element(nav, "label")
        element(label, "input", type="checkbox", name="only")
        element(label, "span", " only plays with findings")
        element(nav, "output")
        for i, play in enumerate(self.charted, start=1):
            self._play(sec, play, i)
        if self.listed or self.left_out:
            more = element(body, "section", id="more")
            element(more, "h2", f"{len(self.listed) + self.left_out} more plays, not charted")
            element(more, "p", f"The page charts at most {self.max_charts} plays ({self.max_bars} bars) and lists "
                f"{self.max_rows} more; "
                f"{self.left_out} plays past those are counted in the summary only.", class_="meta left-out",
                data_left_out=self.left_out)  # fmt: skip
            table = element(more, "table", class_="listed")
            tr = element(table, "tr")
            for name in ("play", "flow", "status", "events", "verdict"):
                element(tr, "th", name)
            for v in self.listed:
                tr = element(table, "tr", data_verdict="ok" if v.ok else "findings")
                for cell in (v.play_id, v.flow_id or "-", v.status, str(v.events)):
                    element(tr, "td", clip(cell, 120))
                kinds = ", ".join(sorted({f"{f.kind} (seq {f.seq})" for f in v.findings}))
                element(tr, "td", "✔ ok" if v.ok else f"✘ {clip(kinds)}")

    def _play(self, sec: ET.Element, play: _Play, i: int) -> None:
        v, tl = play.verdict, play.timeline
        article = element(
            sec,
            "article",
            class_="play",
            id=f"play-{i}",
            data_play=v.play_id,
            data_status=v.status,
            data_verdict="ok" if v.ok else "findings",
            data_search=f"{v.play_id} {v.flow_id or ''}".lower(),
        )
        element(article, "h2", v.play_id)
        facts = [f"flow {v.flow_id or '?'}", v.status, f"{v.events} events"]
        if tl is not None:
            facts[0] += f" v{tl.flow_version}"
            facts += [f"started {_iso(tl.start)}", f"took {duration(tl.duration_ms)}" + ("" if tl.end else " so far")]
            facts.append(f"{tl.attempts} attempts of {len(tl.lanes)} flowlets")
        element(article, "p", " · ".join(facts), class_="meta")
        if tl is not None and tl.error:
            element(article, "p", f"error: {clip(tl.error)}", class_="error")
        verdict = element(article, "div", class_=f"verdict {'ok' if v.ok else 'findings'}")
        if v.ok:
            anchored = {True: ", anchored by a signed checkpoint", False: "", None: ""}[v.anchored]
            verdict.text = "✔ verified: hash chain intact" + anchored + (", unanchored" if v.unanchored else "")
        else:
            verdict.text = f"✘ {len(v.findings)} findings"
            self._findings(verdict, v.findings)
        if tl is None:
            element(article, "p", play.why_no_chart or "not charted", class_="nochart")
        else:
            figure = element(article, "figure", class_="chart")
            figure.append(render(tl))


__all__ = ["CSP", "MAX_CHARTS", "Report"]
