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


def t5_encoder(tokenizer, d_model: int, umt5: bool = False):
    """Build a two-layer T5 (or UMT5) text encoder of width `d_model` for `tokenizer`, from the global torch seed."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    return model_class(
        config_class(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
