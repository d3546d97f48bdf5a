"""What a module returns to hand its work to an outside system."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pending:
    """Return this from a module to say "an outside service finishes this".

    The channel keeps the flowlet open (and heartbeating) until someone sends
    ``{"type": "complete", "token": ..., "ok": true, "output": ...}`` to the
    channel's port; that becomes the flowlet's result. The flowlet's timeout still
    applies. ``detail`` is shown by ``flow8 channels status``.
    """

    token: str
    detail: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token:
            raise ValueError(f"Pending needs a non-empty string token, got {self.token!r}")
