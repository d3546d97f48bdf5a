"""What a module returns to hand its work to an outside system."""

from __future__ import annotations

from dataclasses import dataclass

from flow8_streams.errors import ModuleFailed


@dataclass(frozen=True, slots=True)
class Pending:
    """Return this from a module to say "an outside service finishes this".

    Before returning it, hand ``ctx.completion_token`` (minted by flow8 for this attempt)
    to that service. The channel keeps the flowlet open (and heartbeating) until someone
    sends ``{"type": "complete", "token": <that token>, "ok": true, "output": ...}`` to the
    channel's port; that becomes the flowlet's result. The flowlet's timeout still applies.
    ``detail`` is shown by ``flow8 channels status``.

    A module does not choose the token: ``Pending(token=...)`` fails the flowlet, not
    retryable, saying so.
    """

    detail: str | None = None
    token: None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            raise ModuleFailed(
                "Pending(token=...) is refused: flow8 mints the completion token; hand "
                "ctx.completion_token to the outside service and return Pending(detail=...)",
                retryable=False,
            )
