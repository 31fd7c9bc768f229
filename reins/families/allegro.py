"""Adapters for allegro pipelines (filled in next)."""

FAMILIES = ()
