"""Text data without per-item Python objects: token sequences in flat numpy arrays."""

from .sequences import TokenSequences, padding_fraction

__all__ = ["TokenSequences", "padding_fraction"]
