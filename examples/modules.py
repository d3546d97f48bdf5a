"""Modules for the example flows: small real work on local text files.

Load them with ``flow8 run FLOW --modules examples/modules.py``. A module takes a
``ModuleContext`` (``ctx.input`` is the flowlet's input) and returns JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from flow8_streams.channels import Pending
from flow8_streams.errors import ModuleFailed
from flow8_streams.modules import ModuleContext

WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def extract(ctx: ModuleContext) -> dict[str, Any]:
    """``{"path": p}``: statistics of a text file (or of every text file under a folder)."""
    path = Path(str(ctx.input.get("path", ""))) if isinstance(ctx.input, dict) else Path()
    if not str(path) or not path.exists():
        raise ModuleFailed(f"extract: no file or folder at {str(path)!r}", retryable=False)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    lines = words = chars = 0
    counts: Counter[str] = Counter()
    read = 0
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not a document
        read += 1
        lines += text.count("\n") + (1 if text and not text.endswith("\n") else 0)
        chars += len(text)
        found = [w.lower() for w in WORD.findall(text)]
        words += len(found)
        counts.update(w for w in found if len(w) > 3)
    return {
        "source": str(path),
        "files": read,
        "lines": lines,
        "words": words,
        "chars": chars,
        "top_words": dict(counts.most_common(10)),
    }


def aggregator(ctx: ModuleContext) -> dict[str, Any]:
    """Merge the statistics of every extract in the input mapping."""
    parts = [v for v in (ctx.input or {}).values() if isinstance(v, dict) and "words" in v]
    sources = [s for p in parts for s in p.get("sources", [p.get("source")])]
    if not parts:
        raise ModuleFailed("aggregator: no extract results in the input", retryable=False)
    counts: Counter[str] = Counter()
    for p in parts:
        counts.update(p.get("top_words", {}))
    total_words = sum(p["words"] for p in parts)
    return {
        "sources": sources,
        "files": sum(p["files"] for p in parts),
        "lines": sum(p["lines"] for p in parts),
        "words": total_words,
        "chars": sum(p["chars"] for p in parts),
        "avg_word_length": round(sum(p["chars"] for p in parts) / total_words, 2) if total_words else 0,
        "top_words": dict(counts.most_common(10)),
    }


def report(ctx: ModuleContext) -> dict[str, Any]:
    """``{"stats": {...}, "path": p}``: write a Markdown report of aggregated statistics."""
    stats, path = ctx.input.get("stats"), ctx.input.get("path")
    if not isinstance(stats, dict) or not isinstance(path, str):
        raise ModuleFailed("report: input needs 'stats' (an object) and 'path' (a string)", retryable=False)
    rows = "\n".join(f"| {w} | {n} |" for w, n in stats.get("top_words", {}).items())
    body = (
        f"# Document report\n\n{stats['files']} files, {stats['lines']} lines, {stats['words']} words.\n\n"
        f"| word | count |\n|---|---|\n{rows}\n"
    )
    Path(path).write_text(body, encoding="utf-8")
    return {"path": path, "bytes": len(body.encode())}


def request_review(ctx: ModuleContext) -> Pending:
    """``{"queue": dir}``: hand the play to a reviewer and wait for their verdict (a channel module).

    The request written to ``queue`` carries the completion token flow8 minted for this attempt
    (readable by its owner only: the token completes the flowlet); the reviewer's tool completes
    it at the channel's port: ``await flow8_streams.channels.client.complete(port, token,
    output={"approved": True})``. The flowlet's timeout bounds the wait."""
    queue = ctx.input.get("queue")
    if not isinstance(queue, str) or ctx.completion_token is None:
        raise ModuleFailed("request_review: input needs 'queue' (a directory), and a channel", retryable=False)
    request = Path(queue) / f"{ctx.play_id}.{ctx.flowlet}.{ctx.attempt}.json"
    request.parent.mkdir(parents=True, exist_ok=True)
    request.touch(mode=0o600)
    request.write_text(json.dumps({"play_id": ctx.play_id, "token": ctx.completion_token}), encoding="utf-8")
    return Pending(detail=f"waiting for a review ({request.name})")


request_review.flow8_channel = True  # type: ignore[attr-defined]


MODULES = {"extract": extract, "aggregator": aggregator, "report": report, "request_review": request_review}
