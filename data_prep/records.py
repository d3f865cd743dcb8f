"""The error record every data-prep stage returns instead of raising (video2dataset's contract,
docs/design.md, "Data-prep stages"): a bad input or window becomes a record in errors.jsonl, never a dead shard."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ErrorRecord:
    """Why one input (or one window of it) yielded no clip."""

    input: str
    """The input's path."""
    stage: str
    """Where it failed: probe, window, decode_audio, decode_video."""
    message: str
    """What is wrong, in words that name the window and time where there is one."""

    def to_dict(self) -> dict:
        return asdict(self)
