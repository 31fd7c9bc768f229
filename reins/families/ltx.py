"""Adapters for ltx pipelines (filled in next)."""

FAMILIES = ()
