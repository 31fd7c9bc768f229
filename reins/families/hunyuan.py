"""Adapters for hunyuan pipelines (filled in next)."""

FAMILIES = ()
