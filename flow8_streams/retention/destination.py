"""Where archives go: a local directory (``retention.archive: /var/lib/flow8/archive`` or
``--to DIR``), or any S3-compatible store (``s3://bucket/prefix``, the ``s3`` extra: boto3).
Each company's archives are under a name of its own, ``<root>/<company>/``.

A destination gives the archiver a local directory to write in (``staging``) and then takes the
files (``publish``): a directory writes in place; S3 writes to a temporary directory, uploads each
file and reads it back, so a file counts as archived only once the store holds it whole.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from flow8_streams.errors import InvalidInput, StoreUnavailable
from flow8_streams.redact import scrub
from flow8_streams.retention.manifest import sha256_file
from flow8_streams.settings import RetentionS3


class Destination(Protocol):
    def staging(self, company: str) -> contextlib.AbstractContextManager[Path]:
        """A local directory to write the company's archive and manifest in."""

    def publish(self, company: str, files: Sequence[Path]) -> list[str]:
        """Where each of ``files`` (written in ``staging``) now is, once the destination holds it whole."""


class Directory:
    """A local directory (or a mounted volume). Files land in it under a temporary name and are
    renamed when whole: a reader never sees half an archive."""

    def __init__(self, root: Path) -> None:
        if root.exists() and not root.is_dir():
            raise InvalidInput(f"archive destination {root} is not a directory")
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    @contextlib.contextmanager
    def staging(self, company: str) -> Iterator[Path]:
        """The company's directory, made (mode 0700) when missing. A company id has no ``/`` and
        does not start with a dot (``ID_PATTERN``): it names one directory inside the root."""
        where = self.root / company
        try:
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise InvalidInput(f"archive destination {where}: {exc.strerror or exc}") from None
        yield where

    def publish(self, company: str, files: Sequence[Path]) -> list[str]:
        return [str(f) for f in files]


class S3:
    """``s3://bucket/prefix`` on AWS or any S3-compatible store (``retention.s3.endpoint_url``).
    Credentials: ``retention.s3.access_key_id``/``secret_access_key``, else boto3's own chain
    (``AWS_ACCESS_KEY_ID``, a profile, an instance role). Never printed: messages name the bucket
    and the endpoint's host only."""

    def __init__(self, url: str, options: RetentionS3) -> None:
        from flow8_streams.extras import require_s3

        require_s3(f"archiving to {url}")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise InvalidInput(f"archive destination {url!r} names no bucket: s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = url
        self.options = options
        self._client: Any = None

    def __str__(self) -> str:
        return self.url

    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            o = self.options
            self._client = boto3.client(
                "s3",
                endpoint_url=o.endpoint_url,
                region_name=o.region or "us-east-1",
                aws_access_key_id=o.access_key_id.get_secret_value() if o.access_key_id else None,
                aws_secret_access_key=o.secret_access_key.get_secret_value() if o.secret_access_key else None,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
            )
        return self._client

    def key(self, company: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, company, name) if p)

    @contextlib.contextmanager
    def staging(self, company: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="flow8-archive-") as tmp:
            yield Path(tmp)

    def publish(self, company: str, files: Sequence[Path]) -> list[str]:
        """Upload each file, then read it back whole and compare: only then is it archived."""
        from botocore.exceptions import BotoCoreError, ClientError

        where: list[str] = []
        for f in files:
            key = self.key(company, f.name)
            try:
                self.client().upload_file(str(f), self.bucket, key)
                back = f.with_name(f".{f.name}.back")
                self.client().download_file(self.bucket, key, str(back))
            except (BotoCoreError, ClientError) as exc:
                problem = scrub(_short(exc), *([self.options.endpoint_url] if self.options.endpoint_url else []))
                raise StoreUnavailable(f"archive destination s3://{self.bucket}/{key}: {problem}") from None
            if sha256_file(back) != sha256_file(f):
                raise StoreUnavailable(f"s3://{self.bucket}/{key} does not read back as uploaded; nothing deleted")
            back.unlink()
            where.append(f"s3://{self.bucket}/{key}")
        return where


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def destination(value: str | Path, s3: RetentionS3 | None = None) -> Directory | S3:
    """The destination ``value`` names (``--to`` or ``retention.archive``)."""
    text = str(value)
    if text.startswith("s3://"):
        return S3(text, s3 or RetentionS3())
    if "://" in text:
        raise InvalidInput(f"archive destination {text!r} is neither a directory nor an s3:// URL")
    return Directory(Path(text).expanduser())
