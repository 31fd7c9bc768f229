"""Tiny cogvideox pipelines (filled in next)."""

TINY_MODELS = ()
