"""Terminal views of plays: the live view while one runs, and the summary after."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from flow8_streams.domain.state import FlowletState, FlowletStatus, PlayState

STYLE = {
    "pending": ("dim", "·"),
    "scheduled": ("cyan", "◌"),
    "retry_wait": ("yellow", "↻"),
    "running": ("cyan", "▶"),
    "succeeded": ("green", "✔"),
    "failed": ("red", "✘"),
    "timed_out": ("red", "⏱"),
    "skipped": ("dim", "⤼"),
    "cancelled": ("magenta", "■"),
}
PLAY_STYLE = {"running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "magenta"}
MAX_ROWS = 24
# C0 and C1 control characters but tab and newline: an escape sequence in stored text would
# reach the terminal (rich's Text keeps ESC)
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str, style: str = "") -> Text:
    """Stored or outside text as it is shown: never markup, control characters as visible escapes."""
    return Text(CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text), style=style)


def _seconds(f: FlowletState, now: datetime) -> str:
    if f.started_at is None:
        return ""
    end = f.ended_at or now
    return f"{(end - f.started_at).total_seconds():.2f}s"


def _status(status: FlowletStatus) -> Text:
    style, icon = STYLE[status.value]
    label = "retrying" if status is FlowletStatus.RETRY_WAIT else status.value
    return Text(f"{icon} {label}", style=style)


def flowlet_table(state: PlayState, *, live: bool) -> Table:
    now = datetime.now(UTC)
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    # names wrap whole, never cut short; the short columns keep their width
    table.add_column("flowlet", overflow="fold", ratio=3)
    table.add_column("module", overflow="fold", ratio=2)
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("attempts", no_wrap=True, min_width=8)
    table.add_column("time", no_wrap=True, min_width=6)
    table.add_column("detail", overflow="fold", ratio=3, max_width=60)
    rows = list(state.flowlets.items())
    if live and len(rows) > MAX_ROWS:
        # Many flowlets: show what is moving or went wrong, not a wall of green.
        order = {"running": 0, "scheduled": 0, "retry_wait": 1, "failed": 2, "timed_out": 2}
        rows = sorted(rows, key=lambda r: order.get(r[1].status.value, 9))[:MAX_ROWS]
    for name, f in rows:
        spec = state.flow.by_name[name]
        detail = f.error or ""
        table.add_row(  # stored text: Text, never markup
            plain(name),
            plain(spec.module_ref),
            _status(f.status),
            str(f.attempts or ""),
            _seconds(f, now),
            plain(detail, style="dim"),
        )
    return table


def live_view(state: PlayState) -> RenderableType:
    counts: dict[str, int] = {}
    for f in state.flowlets.values():
        counts[f.status.value] = counts.get(f.status.value, 0) + 1
    total = len(state.flowlets)
    done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "timed_out", "skipped", "cancelled"))
    elapsed = (datetime.now(UTC) - state.started_at).total_seconds()
    header = Text.assemble(
        ("play ", "bold"),
        plain(state.play_id),
        "  flow ",
        plain(f"{state.flow.name} v{state.flow.version}", "bold"),
        "  ",
        (state.status.value, PLAY_STYLE[state.status.value]),
        f"  {done}/{total} flowlets  {elapsed:.1f}s",
    )
    summary = Text("  ".join(f"{STYLE[k][1]} {k} {v}" for k, v in sorted(counts.items())), style="dim")
    return Group(header, ProgressBar(total=total, completed=done, width=60), summary, flowlet_table(state, live=True))


def print_summary(console: Console, play: PlayState, output_json: Any) -> None:
    style = PLAY_STYLE[play.status.value]
    took = ((play.ended_at or datetime.now(UTC)) - play.started_at).total_seconds()
    console.print(flowlet_table(play, live=False))
    console.print(
        Text.assemble(
            ("play ", "bold"), plain(play.play_id), " ", (play.status.value, f"bold {style}"), f" in {took:.2f}s"
        )
    )
    if play.error:
        console.print(plain(play.error, style=style))
    if play.output is not None:
        console.print_json(output_json)
