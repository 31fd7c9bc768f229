"""Tiny allegro pipelines (filled in next)."""

TINY_MODELS = ()
