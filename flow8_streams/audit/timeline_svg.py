"""A ``Timeline`` drawn as SVG: one row per flowlet, a bar per attempt from its start to its end,
coloured by outcome and marked with a glyph (so the legend does not rely on colour alone), the
queue or defer before an attempt as a thin line, retry waits as dashed lines, an axis in ms or s.

Built with ``xml.etree.ElementTree``: every string from the log (names, errors, channels) goes
into the tree as text or an attribute value and is escaped when the tree is written, never
pasted into markup. Colours are presentation attributes, so the SVG needs no stylesheet: the
report and the web UI embed the same element. Classes (``attempt failed``, ``wait``, ``lane``)
and ``data-*`` attributes name what each shape is, for tests, filters and hovers.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from datetime import datetime

from flow8_streams.audit.timeline import Attempt, Lane, Outcome, Timeline

LABEL_WIDTH = 190  # the flowlet names' column
CHART_WIDTH = 760
LANE_HEIGHT = 24
BAR_HEIGHT = 14
AXIS_HEIGHT = 28
MAX_LANES = 200  # flowlets drawn per play; the rest are counted in a last row
MAX_ATTEMPTS = 100  # attempts drawn per flowlet (the retry policy's most): the latest ones
MAX_TEXT = 300  # characters of a log string shown in a hover
MAX_LABEL = 28  # characters of a flowlet name in its row

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies) and a glyph each
STYLE: dict[Outcome, tuple[str, str, str]] = {  # outcome -> fill, glyph, legend text
    Outcome.SUCCEEDED: ("#009E73", "✓", "succeeded"),
    Outcome.FAILED: ("#D55E00", "✗", "failed"),
    Outcome.TIMED_OUT: ("#E69F00", "◔", "timed out"),
    Outcome.CANCELLED: ("#999999", "⊘", "cancelled"),
    Outcome.RUNNING: ("#0072B2", "…", "running"),
}
SKIPPED_GLYPH = "↷"
CHANNEL_GLYPH = "⇄"
INK, GRID, WAIT = "#222222", "#dddddd", "#555555"


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """At most ``limit`` characters of ``text``, marked when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(ms: float) -> str:
    """A duration for people: ``850 ms``, ``1.25 s``, ``2 min 5 s``."""
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 or ms == 0 else f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.3g} s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{minutes:.0f} min {seconds:.0f} s"


def _step(span_ms: float, ticks: int = 8) -> float:
    """A tick spacing of 1, 2 or 5 times a power of ten giving at most ``ticks`` ticks."""
    raw = max(span_ms, 1.0) / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    return next(float(m * power) for m in (1, 2, 5, 10) if m * power >= raw)


def _tick_label(ms: float, step: float) -> str:
    if step >= 60_000:
        return f"{ms / 60_000:g} min"
    if step >= 1000:
        return f"{ms / 1000:g} s"
    return f"{ms:g} ms"


def element(parent: ET.Element, tag: str, text: str | None = None, **attrs: object) -> ET.Element:
    """A child of ``parent``; ``class_=``, ``data_play=`` name the attributes ``class``, ``data-play``."""
    el = ET.SubElement(parent, tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


class _Scale:
    def __init__(self, tl: Timeline) -> None:
        self.tl = tl
        self.span = max(tl.duration_ms, 1.0)

    def x(self, when: datetime) -> float:
        return round(LABEL_WIDTH + min(max(self.tl.offset_ms(when), 0.0), self.span) / self.span * CHART_WIDTH, 2)


def _hover(lane: Lane, a: Attempt, tl: Timeline) -> str:
    parts = [
        f"{lane.name}, attempt {a.number}: {STYLE[a.outcome][2]}",
        f"ran {duration(a.duration_ms(tl.until))} from +{duration(tl.offset_ms(a.start))}",
    ]
    if a.queued_ms:
        parts.append(f"waited {duration(a.queued_ms)} after it was scheduled")
    if a.defer_after_ms:
        parts.append(f"deferred {a.defer_after_ms} ms")
    if a.channel is not None:
        parts.append(f"on channel {clip(a.channel, 80)}")
    if a.error:
        parts.append(f"error: {clip(a.error)}")
    return "; ".join(parts)


def render(tl: Timeline, *, max_lanes: int = MAX_LANES) -> ET.Element:
    """The ``<svg>`` element of ``tl`` (no XML namespace: for embedding in HTML; add
    ``xmlns="http://www.w3.org/2000/svg"`` to serve it alone)."""
    lanes = tl.lanes[:max_lanes]
    hidden = len(tl.lanes) - len(lanes)
    rows = len(lanes) + (1 if hidden else 0)
    width, height = LABEL_WIDTH + CHART_WIDTH + 90, AXIS_HEIGHT + rows * LANE_HEIGHT + 6
    svg = ET.Element(
        "svg",
        {
            "class": "timeline",
            "viewBox": f"0 0 {width} {height}",
            "width": str(width),
            "height": str(height),
            "role": "img",
            "font-family": "system-ui, sans-serif",
            "font-size": "11",
            "data-play": tl.play_id,
        },
    )
    element(svg, "title", f"Timeline of play {clip(tl.play_id, 120)}: {tl.status}, {duration(tl.duration_ms)}")
    scale = _Scale(tl)
    _axis(svg, scale, height)
    for i, lane in enumerate(lanes):
        _lane(svg, lane, scale, AXIS_HEIGHT + i * LANE_HEIGHT)
    if hidden:
        y = AXIS_HEIGHT + len(lanes) * LANE_HEIGHT + LANE_HEIGHT / 2 + 4
        element(svg, "text", f"… {hidden} more flowlets not drawn", x=4, y=y, fill=INK, class_="more")
    return svg


def _axis(svg: ET.Element, scale: _Scale, height: int) -> None:
    axis = element(svg, "g", class_="axis", fill=INK)
    step = _step(scale.span)
    n = 0
    while n * step <= scale.span + 1e-9:
        ms = n * step
        x = round(LABEL_WIDTH + ms / scale.span * CHART_WIDTH, 2)
        element(axis, "line", x1=x, x2=x, y1=AXIS_HEIGHT - 6, y2=height - 4, stroke=GRID)
        element(axis, "text", _tick_label(ms, step), x=x, y=AXIS_HEIGHT - 10, text_anchor="middle")
        n += 1


def _lane(svg: ET.Element, lane: Lane, scale: _Scale, top: float) -> None:
    g = element(svg, "g", class_=f"lane {lane.status.value}", data_flowlet=lane.name)
    mid = top + LANE_HEIGHT / 2
    label = element(g, "text", clip(lane.name, MAX_LABEL), x=4, y=mid + 4, fill=INK, class_="label")
    if lane.on_channel:
        label.text = f"{label.text} {CHANNEL_GLYPH}"
    element(label, "title", f"{clip(lane.name)} ({clip(lane.module_ref or '?', 80)}): {lane.status.value}")
    attempts, waits = lane.attempts[-MAX_ATTEMPTS:], lane.waits[-MAX_ATTEMPTS:]
    for w in waits:
        line = element(
            g,
            "line",
            class_="wait",
            x1=scale.x(w.start),
            x2=scale.x(w.end),
            y1=mid,
            y2=mid,
            stroke=WAIT,
            stroke_dasharray="3 3",
            data_after=w.after,
        )
        waited = duration((w.end - w.start).total_seconds() * 1000)
        element(
            line, "title", f"{lane.name}: retry after attempt {w.after}, backoff {w.backoff_ms} ms, waited {waited}"
        )
    for a in attempts:
        _attempt(g, lane, a, scale, top, mid)
    if len(lane.attempts) > len(attempts):
        label.text = f"{label.text} (+{len(lane.attempts) - len(attempts)})"
        element(label, "title", f"{len(lane.attempts) - len(attempts)} earlier attempts not drawn")
    if lane.skipped_at is not None:
        mark = element(g, "text", f"{SKIPPED_GLYPH} skipped", x=scale.x(lane.skipped_at), y=mid + 4, class_="skipped")
        mark.set("fill", WAIT)
        element(mark, "title", f"{lane.name} skipped: {clip(lane.reason or '')}")


def _attempt(g: ET.Element, lane: Lane, a: Attempt, scale: _Scale, top: float, mid: float) -> None:
    fill, glyph, _ = STYLE[a.outcome]
    classes = f"attempt {a.outcome.value}" + (" channel" if a.channel is not None else "")
    ag = element(g, "g", class_=classes, data_attempt=a.number, data_outcome=a.outcome.value)
    element(ag, "title", _hover(lane, a, scale.tl))
    if a.scheduled_at is not None and a.queued_ms > 0:
        element(
            ag,
            "line",
            class_="queued",
            x1=scale.x(a.scheduled_at),
            x2=scale.x(a.start),
            y1=mid,
            y2=mid,
            stroke=fill,
            stroke_width=2,
        )
    x0 = scale.x(a.start)
    x1 = max(scale.x(a.end or scale.tl.until), x0 + 2)  # a bar of no length is still seen
    bar = element(
        ag,
        "rect",
        class_="bar",
        x=x0,
        y=top + (LANE_HEIGHT - BAR_HEIGHT) / 2,
        width=round(x1 - x0, 2),
        height=BAR_HEIGHT,
        fill=fill,
        rx=2,
    )
    if a.channel is not None:  # time on a channel: outlined and marked
        bar.set("stroke", INK)
        bar.set("stroke-dasharray", "4 2")
    mark = glyph + (str(a.number) if a.number > 1 else "") + (CHANNEL_GLYPH if a.channel is not None else "")
    element(ag, "text", mark, x=round(x1 + 2, 2), y=mid + 4, fill=INK, class_="mark")


def legend() -> ET.Element:
    """A small ``<svg>`` naming each outcome by colour, glyph and word, and the lines."""
    svg = ET.Element("svg", {"class": "legend", "height": "22", "font-family": "system-ui, sans-serif"})
    svg.set("font-size", "11")
    x = 4
    for fill, glyph, text in STYLE.values():
        element(svg, "rect", x=x, y=4, width=18, height=BAR_HEIGHT, fill=fill, rx=2)
        element(svg, "text", f"{glyph} {text}", x=x + 22, y=15, fill=INK)
        x += 40 + 7 * len(text)
    element(svg, "line", x1=x, x2=x + 18, y1=11, y2=11, stroke=WAIT, stroke_dasharray="3 3")
    element(svg, "text", "retry wait", x=x + 22, y=15, fill=INK)
    x += 90
    element(svg, "line", x1=x, x2=x + 18, y1=11, y2=11, stroke=INK, stroke_width=2)
    element(svg, "text", "queued / deferred", x=x + 22, y=15, fill=INK)
    x += 130
    element(svg, "rect", x=x, y=4, width=18, height=BAR_HEIGHT, fill="#ffffff", stroke=INK, stroke_dasharray="4 2")
    element(svg, "text", f"{CHANNEL_GLYPH} on a channel", x=x + 22, y=15, fill=INK)
    x += 110
    element(svg, "text", f"{SKIPPED_GLYPH} skipped", x=x, y=15, fill=WAIT)
    svg.set("width", str(x + 70))
    svg.set("viewBox", f"0 0 {x + 70} 22")
    return svg


__all__ = ["STYLE", "clip", "duration", "element", "legend", "render"]
