"""Tiny hunyuan pipelines (filled in next)."""

TINY_MODELS = ()
