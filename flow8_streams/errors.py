"""One exception tree for the whole project.

Library errors (sqlite3, pymongo, aiokafka) are mapped to these at the adapter
boundary. Which exit code (``flow8_streams.cli.errors``) or HTTP status each class means is
decided where it is shown, in one table per face; the classes carry only a message and a
``reason`` tag.
"""

from __future__ import annotations


class Flow8Error(Exception):
    """Root of every error flow8 raises on purpose.

    ``reason`` is a short machine-friendly tag: the ``flow8-reason`` header of a
    dead-lettered message and the ``reason`` label of its metric.
    """

    reason = "rejected"


class InvalidInput(Flow8Error):
    """Something a user gave us is wrong: exit code 2 on the CLI, a 4xx over HTTP."""


class InvalidFlow(InvalidInput):
    """A flow definition does not validate. ``errors`` lists each problem."""

    def __init__(self, flow: str, errors: list[str]) -> None:
        self.flow = flow
        self.errors = errors
        super().__init__(f"flow {flow!r} is invalid: " + "; ".join(errors))


class InvalidCommand(InvalidInput):
    """A command (StartPlay, CancelPlay) is malformed."""


class CompanyMismatch(InvalidCommand):
    """A message names a play of another company. Refused: a tenant never reaches
    another tenant's play, and the error never names the play's owner."""

    reason = "company_mismatch"

    @classmethod
    def of(cls, what: str, play_id: str, company_id: str) -> CompanyMismatch:
        """``what`` (a message type) names ``company_id`` for ``play_id``, another company's play."""
        return cls(f"{what} for play {play_id!r} names company {company_id!r}, which does not own that play")


class LimitExceeded(InvalidInput):
    """An input is over one of the deployment's limits (``flow8_streams.domain.limits``)."""

    reason = "limit_exceeded"


class BadMessage(InvalidInput, ValueError):
    """A Kafka message that cannot be decoded; ``reason`` is a short machine-friendly tag (the
    dead-letter header), ``detail`` says what is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TemplateError(InvalidInput, ValueError):
    """A ``${...}`` reference of a flowlet's input is malformed or does not resolve."""

    reason = "bad_template"


class EngineError(Flow8Error, ValueError):
    """A message or event that cannot apply to a play's state: a history cut, reordered or
    written by someone else, or a host bug; never a user's input."""

    reason = "inconsistent_history"


class UnknownModule(InvalidInput):
    """A flowlet names a module that is not registered."""


class NotFound(Flow8Error):
    """A play, flow or key does not exist."""


class StoreUnavailable(Flow8Error):
    """A store (SQLite, MongoDB, Kafka) cannot be reached or refused the operation."""


class ReadTooLarge(StoreUnavailable):
    """A read of the log would pass one of its bounds (records, bytes): refused whole, never cut short."""

    reason = "read_too_large"


class ReadTimedOut(StoreUnavailable):
    """A read of the log did not end within its time bound."""

    reason = "read_timed_out"


class ModuleFailed(Flow8Error):
    """Raised by a module to fail its flowlet attempt with a clean message.

    ``retryable=False`` fails the flowlet at once, whatever its retry policy.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
