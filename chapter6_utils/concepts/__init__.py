"""Concepts: which channels carry a class's relevance (chapter 6, "What do neurons respond to").

* :func:`concept_relevance` (conditional LRP, the input relevance that flows through
  chosen channels) and :func:`channel_relevance` (each channel's share): :mod:`.core`.
"""
from .core import channel_relevance, concept_relevance

__all__ = ["concept_relevance", "channel_relevance"]
