"""Adapters for cogvideox pipelines (filled in next)."""

FAMILIES = ()
