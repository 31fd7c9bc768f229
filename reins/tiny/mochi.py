"""Tiny mochi pipelines (filled in next)."""

TINY_MODELS = ()
