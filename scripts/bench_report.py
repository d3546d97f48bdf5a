"""What ``flow8 audit export --html`` costs: the export alone, then with the report (each play
verified and added, 500 charted), and the page's size; plus timelines built and drawn per second.

    .venv/bin/python scripts/bench_report.py [--plays 10000] [--dir DIR]

Records PLAYS plays of the 4-flowlet diamond of ``bench_audit.py`` on the embedded runtime with
a signing key, then times each step in this one process (wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench_audit import Timer, record

from flow8_streams.audit import Audit, Filter, SqliteSource, export
from flow8_streams.audit.checkpoints import key_id, keygen, load_public_key
from flow8_streams.audit.report import Report
from flow8_streams.audit.timeline import build
from flow8_streams.audit.timeline_svg import render
from flow8_streams.domain.events import event_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="Keep the db, export and page here (default: temp).")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="flow8-bench-report-"))
    root.mkdir(parents=True, exist_ok=True)
    db = root / "bench.db"
    if not db.exists():
        private, _, _ = keygen(root / "keys")
        t0 = time.perf_counter()
        asyncio.run(record(db, private, args.plays))
        print(f"recorded {args.plays} plays in {time.perf_counter() - t0:.1f} s")
    public = load_public_key(root / "keys" / "audit-signing.pub")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    flt = Filter("acme")

    source = SqliteSource(db)
    signed = list(source.checkpoints())
    with Timer() as t:
        _, events, _ = export(root / "plain.jsonl.gz", source.histories(flt), signed, company="acme", public_key=public)
    print(f"export              {events:>8} events {t.rate(events)}")

    with Timer() as t:
        audit = Audit(flt, signed, public_key=public)
        report = Report("acme", source=db.name, key_id=key_id(public))
        histories = report.tap(source.histories(flt), audit)
        export(root / "with-report.jsonl.gz", histories, signed, company="acme", public_key=public)
        report.write(root / "report.html", audit.finish())
    size = (root / "report.html").stat().st_size
    print(f"export --html       {events:>8} events {t.rate(events)}  page {size:,} bytes, {len(report.charted)} charts")

    histories_list = [h for _, h in zip(range(1000), source.histories(flt), strict=False)]
    source.close()
    with Timer() as t:
        for h in histories_list:
            ET.tostring(render(build([event_adapter.validate_python(d) for d in h.documents])), encoding="unicode")
    n = len(histories_list)
    print(
        f"timeline + svg      {n:>8} plays  {t.wall:6.2f} s  {n / t.wall:>9,.0f} plays/s  ({n / t.cpu:,.0f} per CPU-s)"
    )
    print(f"files kept in {root}")


if __name__ == "__main__":
    main()
