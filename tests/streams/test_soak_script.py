"""``scripts/soak`` for half a minute, so the 30-minute soak (opt-in: see README) cannot rot: its
three workers run, every play completes once, and it writes its samples, its summary and (with
matplotlib, the ``soak`` extra) its plot. The verdict on half a minute means nothing: not asserted."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import require_service

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "soak"


@pytest.mark.timeout(200)
def test_the_soak_script_runs_and_writes_its_figures(tmp_path: Path) -> None:
    require_service("KAFKA_BOOTSTRAP_SERVERS")
    require_service("MONGODB_URI")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = ["--minutes", "0.5", "--warmup", "0.1", "--rate", "10", "--every", "2", "--drain", "60", "--out", tmp_path]
    done = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], env=env, capture_output=True, text=True, timeout=190, check=False
    )
    assert done.returncode in (0, 1), done.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["every_play_once"], summary
    assert summary["plays"] >= 200 and summary["statuses"] == {"succeeded": summary["plays"]}
    with (tmp_path / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {row["worker"] for row in rows} == {"0", "1", "2"}
    assert all(float(row["rss_mib"]) > 0 and int(row["fds"]) > 0 for row in rows)
    assert "verdict: " in done.stdout
    if importlib.util.find_spec("matplotlib") is None:
        assert summary["png"] is None and "matplotlib is missing" in done.stderr
        pytest.skip("the plot is not checked: matplotlib (the soak extra) is not installed")
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
