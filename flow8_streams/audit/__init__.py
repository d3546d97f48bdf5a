"""Audits: read play histories from a store or an archive, verify each chain against signed
anchors and its projection, and export what an auditor verifies offline.

``sources`` (SqliteSource, StoreSource, ArchiveSource and the Filter), ``verify`` (the verdict
on one play), ``checkpoints`` (keys, the runtime's Checkpointer, reading and checking signed
checkpoints), ``run`` (an audit run and an export). The CLI's ``flow8 audit`` calls these.
"""

from __future__ import annotations

from flow8_streams.audit.run import Audit, export
from flow8_streams.audit.sources import ArchiveSource, Filter, SqliteSource, StoreSource
from flow8_streams.audit.verify import Anchor, Finding, PlayHistory, Summary, Verdict, verify

__all__ = [
    "Anchor",
    "ArchiveSource",
    "Audit",
    "Filter",
    "Finding",
    "PlayHistory",
    "SqliteSource",
    "StoreSource",
    "Summary",
    "Verdict",
    "export",
    "verify",
]
