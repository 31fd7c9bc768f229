"""Prompt token counting in the API process, with the `tokenizers` library only (no torch, no transformers)."""

from __future__ import annotations

import logging
from pathlib import Path

from tokenizers import Tokenizer

logger = logging.getLogger(__name__)


def load_token_counter(model_path: str) -> Tokenizer | None:
    """Load `tokenizer/tokenizer.json` from a local pipeline folder; None when the model is not a local folder.

    Without a tokenizer the API cannot tell at submit time whether a prompt will be truncated. The worker counts
    tokens with the pipeline's own tokenizer in every case and records the result on the job.
    """
    path = Path(model_path) / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        logger.info("no local tokenizer at %s; prompt truncation is reported by the worker", path)
        return None
    return Tokenizer.from_file(str(path))


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=True).ids)
