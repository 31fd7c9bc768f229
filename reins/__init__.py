"""REINS: inference-time safety steering for video diffusion transformers."""
