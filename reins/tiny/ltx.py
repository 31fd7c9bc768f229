"""Tiny ltx pipelines (filled in next)."""

TINY_MODELS = ()
