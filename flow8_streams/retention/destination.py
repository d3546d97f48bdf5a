"""Where archives go: a local directory (``retention.archive: /var/lib/flow8/archive`` or
``--to DIR``). Each company's archives are in a directory of its own, ``DIR/<company>/``."""

from __future__ import annotations

from pathlib import Path

from flow8_streams.errors import InvalidInput


class Directory:
    """A local directory (or a mounted volume). Files land in it under a temporary name and are
    renamed when whole: a reader never sees half an archive."""

    def __init__(self, root: Path) -> None:
        if root.exists() and not root.is_dir():
            raise InvalidInput(f"archive destination {root} is not a directory")
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def of(self, company: str) -> Path:
        """The company's directory, made (mode 0700) when missing. A company id has no ``/`` and
        does not start with a dot (``ID_PATTERN``): it names one directory inside the root."""
        where = self.root / company
        try:
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise InvalidInput(f"archive destination {where}: {exc.strerror or exc}") from None
        return where


def destination(value: str | Path) -> Directory:
    """The destination ``value`` names (``--to`` or ``retention.archive``)."""
    text = str(value)
    if text.startswith("s3://"):
        raise InvalidInput(
            f"archive destination {text}: S3 is not supported by this version; archive to a directory "
            "(a mounted volume, or one synchronised to object storage)"
        )
    if "://" in text:
        raise InvalidInput(f"archive destination {text!r} is neither a directory nor an s3:// URL")
    return Directory(Path(text).expanduser())
