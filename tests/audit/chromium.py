"""Headless Chromium as a test harness: a page's DOM after its scripts ran, a screenshot, and the
requests the page made (from Chromium's own net log, not from the page's markup).

The browser is Debian's ``chromium`` (``$FLOW8_CHROMIUM`` to name another). Each run has a
fresh profile and no background services; Chromium's own traffic (update checks) is told apart
from the page's by the request's initiator: a page's requests have its origin (``null`` for a
``file:`` page), the browser's have none.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

RUN_TIMEOUT_S = 90.0  # a guard for a browser that hangs, not a synchronisation
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def find() -> str | None:
    """The Chromium binary, or None."""
    named = os.environ.get("FLOW8_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@dataclass(frozen=True)
class Chromium:
    binary: str
    workdir: Path

    def _run(self, url: str, *action: str, net_log: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        profile = self.workdir / f"profile-{len(list(self.workdir.glob('profile-*')))}"
        args = [
            self.binary,
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            *(["--no-sandbox"] if os.geteuid() == 0 else []),  # Chromium's sandbox refuses root
            *([f"--log-net-log={net_log}"] if net_log is not None else []),
            *action,
            url,
        ]
        result = subprocess.run(args, capture_output=True, timeout=RUN_TIMEOUT_S, check=False, cwd=self.workdir)
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        return result

    def dom(self, page: Path, net_log: Path | None = None) -> str:
        """The page's DOM, serialised once it has loaded and its scripts ran."""
        return self._run(page.resolve().as_uri(), "--dump-dom", net_log=net_log).stdout.decode()

    def screenshot(self, page: Path, out: Path, width: int, height: int) -> Path:
        self._run(page.resolve().as_uri(), f"--screenshot={out}", f"--window-size={width},{height}")
        return out


def page_requests(net_log: Path) -> list[str]:
    """The URLs requested on behalf of a page (not by the browser itself) in a net log."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start and "url" in e.get("params", {}) and e["params"].get("initiator") != "not an origin"
    ]


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    pixels: bytes  # the decompressed image data (scanlines with their filter bytes)


def read_png(path: Path) -> Png:
    """The header and image data of a PNG file; AssertionError if it is not one."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    pos, width, height, idat = len(PNG_SIGNATURE), 0, 0, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return Png(width, height, zlib.decompress(idat))
