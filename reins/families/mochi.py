"""Adapters for mochi pipelines (filled in next)."""

FAMILIES = ()
