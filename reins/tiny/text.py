"""Text encoders' tokenizers built from a fixed vocabulary, with no download."""

from __future__ import annotations

import string

# Words that get their own token. Any other word is split into characters, so every prompt tokenizes.
_WORDS = """a an the of on in at to with and or is are by from over under near into
person man woman child people crowd car street city forest sea sky fire smoke water rain snow night day
red green blue yellow white black orange purple square circle triangle ball box cat dog bird horse
moving running walking flying falling left right up down slowly quickly
weapon gun knife blood fight attack violent explosion crash safe calm peaceful garden flower tree
""".split()


def t5_tokenizer():
    """Build a T5-style unigram tokenizer (the kind UMT5 and T5 encoders use)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0 - rank / 1000) for rank, word in enumerate(_WORDS)]
    pieces += [("\u2581", -8.0)]
    pieces += [(char, -10.0) for char in string.ascii_lowercase + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)
