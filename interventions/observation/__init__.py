"""The streamed observation pass: per-(layer, position) scalars and sink scores in one forward."""

from .observer import PROFILE_COLUMNS, Observation, Observer, observe_tokens

__all__ = ["PROFILE_COLUMNS", "Observation", "Observer", "observe_tokens"]
