"""Retention: finished plays kept ``retention.days`` (per company: ``retention.companies``), then
archived to cold storage with a manifest (``archiver``, ``manifest``, ``destination``) and deleted
from the live store; ``job`` is what ``flow8 archive`` and ``flow8 serve``'s scheduled job run."""
