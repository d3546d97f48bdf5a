"""Bounds on everything that comes from outside the process.

One frozen model, defaults chosen so that any single record the engine writes (a play's
state, an event, a task, a result) stays under Kafka's default 1 MB request size. Hosts
read it from settings (``limits:`` in the YAML file, ``FLOW8_LIMITS__*`` in the
environment) and pass it in; the pure core never reads settings itself.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

KiB = 1024
MiB = 1024 * KiB


class Limits(BaseModel):
    """What one deployment accepts. Every field is a hard cap; a value over it is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_flowlets: int = Field(default=1000, ge=1, le=10_000, description="Flowlets in one flow.")
    max_flow_bytes: int = Field(
        default=256 * KiB, ge=1 * KiB, le=16 * MiB, description="A flow document (file, message or request)."
    )
    max_input_bytes: int = Field(default=256 * KiB, ge=1, le=16 * MiB, description="A play's input, as JSON.")
    max_output_bytes: int = Field(default=256 * KiB, ge=1, le=16 * MiB, description="One flowlet's output, as JSON.")
    max_rendered_bytes: int = Field(
        default=256 * KiB, ge=1, le=16 * MiB, description="One flowlet's input after its templates are rendered."
    )
    max_state_bytes: int = Field(
        default=512 * KiB,
        ge=4 * KiB,
        le=64 * MiB,
        description="A play's input and every output together: with the flow and the inputs of flowlets in "
        "flight, what the streams table writes as one record.",
    )
    max_depth: int = Field(default=64, ge=2, le=512, description="Nesting of JSON/YAML objects and lists.")
    max_message_bytes: int = Field(
        default=1 * MiB,
        ge=1 * KiB,
        le=64 * MiB,
        description="One message from Kafka, one line on a channel port or of a produce file.",
    )
    max_yaml_aliases: int = Field(
        default=100, ge=0, le=10_000, description="YAML aliases (*name) in one document; 0 refuses any."
    )


DEFAULT_LIMITS = Limits()


__all__ = ["DEFAULT_LIMITS", "KiB", "Limits", "MiB"]
