"""``scripts/audit_acceptance.py`` at CI size (200 plays, one worker), so the script that proves
issue 12's acceptance at 10,000 plays cannot rot: it runs to the end and every check it makes
holds, the forgery and the cut tail named by play and seq among them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import require_service

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "audit_acceptance.py"


@pytest.mark.timeout(150)
def test_the_acceptance_script_passes_every_check_at_ci_size(tmp_path: Path) -> None:
    require_service("KAFKA_BOOTSTRAP_SERVERS")
    require_service("MONGODB_URI")
    figures = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = ["--plays", "200", "--workers", "1", "--companies", "3", "--step-timeout", "60", "--json", figures]
    done = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], env=env, capture_output=True, text=True, timeout=140, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(figures.read_text())
    assert report["plays"] == 200
    failed = [c["what"] for c in report["checks"] if not c["ok"]]
    assert failed == []
    said = "\n".join(c["what"] for c in report["checks"])
    assert "the forgery named: {'acme-" in said and "duplicated seq" in said
    assert "the cut named: {'globex-" in said and "the cut named in the archive: {'globex-" in said
    steps = [f["step"] for f in report["figures"]]
    assert "verify --kafka --all-companies (chain, signed heads)" in steps
    assert any(s.startswith("verify --kafka --all-companies, in this process") for s in steps)
    assert any(s.startswith("verify --archive, every export, in this process") for s in steps)
    assert [s for s in steps if s.startswith("verify --archive (")] == [
        "verify --archive (acme)",
        "verify --archive (globex)",
        "verify --archive (initech)",
    ]
    assert all(f["events"] > 0 and f["exit"] == 0 for f in report["figures"])
    assert "Traceback" not in done.stderr
