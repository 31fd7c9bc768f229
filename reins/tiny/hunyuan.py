"""Tiny HunyuanVideo text-to-video pipelines."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import torch

from reins.tiny import GenerationDefaults, TinyModel
from reins.tiny.text import _WORDS


@dataclass(frozen=True)
class _Shape:
    num_layers: int
    num_single_layers: int
    num_attention_heads: int
    attention_head_dim: int
    # Split of attention_head_dim between the frame, height and width rotary axes.
    rope_axes_dim: tuple[int, int, int]
    text_dim: int
    vae_channels: int


_SHAPES = {
    "tiny": _Shape(2, 2, 2, 12, (4, 4, 4), 32, 8),
    "small": _Shape(4, 4, 4, 16, (4, 6, 6), 64, 16),
}
_DEFAULTS = {
    "tiny": GenerationDefaults(height=32, width=32, num_frames=9, num_inference_steps=4),
    "small": GenerationDefaults(height=128, width=128, num_frames=17, num_inference_steps=8),
}
_LATENT_CHANNELS = 4
_CLIP_DIM = 16

# Special tokens of the Llama 3 tokenizer that HunyuanVideo's prompt template uses.
_LLAMA_BOS = "<|begin_of_text|>"
_LLAMA_EOS = "<|end_of_text|>"
_LLAMA_SPECIAL = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# The regular expression with which Llama 3 splits text into words before byte-pair encoding.
_LLAMA_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _template_words() -> list[str]:
    """Return the words of HunyuanVideoPipeline's default prompt template, split the way Llama 3 splits them."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from tokenizers import Regex, pre_tokenizers

    splitter = pre_tokenizers.Split(Regex(_LLAMA_SPLIT), behavior="isolated")
    special = "|".join(re.escape(token) for token in _LLAMA_SPECIAL)
    words = []
    for part in re.split(special, DEFAULT_PROMPT_TEMPLATE["template"].replace("{}", "")):
        words += [piece for piece, _ in splitter.pre_tokenize_str(part)]
    return words


def llama_tokenizer():
    """Build a Llama 3 style tokenizer whose words are whole tokens and whose other text falls back to characters.

    Every word of the pipeline's prompt template is one token, as in the real Llama 3 vocabulary, so the template
    prefix is 95 tokens long (the begin-of-text token included) and the pipeline's fixed crop_start of 95 removes
    exactly the template.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = dict.fromkeys(_template_words())
    words.update(dict.fromkeys(" " + word for word in _WORDS))
    words.update(dict.fromkeys(_WORDS))
    pieces = [("<unk>", 0.0)]
    pieces += [(word, -1.0 - rank / 1000) for rank, word in enumerate(words)]
    # Single characters score far below whole words, so Viterbi segmentation only uses them for unknown words.
    characters = dict.fromkeys(" \n" + string.ascii_letters + string.digits + string.punctuation)
    pieces += [(char, -10.0) for char in characters if char not in words]

    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_LLAMA_SPLIT), behavior="isolated")
    special_tokens = (_LLAMA_BOS, _LLAMA_EOS, *_LLAMA_SPECIAL)
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in special_tokens])
    # Llama 3 starts every sequence with the begin-of-text token and appends nothing.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{_LLAMA_BOS} $A",
        pair=f"{_LLAMA_BOS} $A {_LLAMA_BOS} $B",
        special_tokens=[(_LLAMA_BOS, tokenizer.token_to_id(_LLAMA_BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=_LLAMA_BOS, eos_token=_LLAMA_EOS, pad_token=_LLAMA_EOS,
        unk_token="<unk>", padding_side="right",
    )


def clip_tokenizer():
    """Build a CLIP byte-pair tokenizer over single characters, with merges that join the known words.

    Merges of different words overlap, so some known words still come out in several pieces.
    """
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    characters = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {token: index for index, token in enumerate(specials)}
    for symbol in [*characters, *(char + "</w>" for char in characters)]:
        vocab.setdefault(symbol, len(vocab))

    merges = []
    for word in _WORDS:
        # CLIP marks the last symbol of each word with </w>, so a word is built from its left end onwards.
        symbols = [*word[:-1], word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            merges.append((merged, symbol))
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _text_encoder(shape: _Shape, tokenizer):
    from transformers import LlamaConfig, LlamaModel

    # The pipeline reads the hidden state three from the end, so the encoder needs at least two layers.
    return LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=shape.text_dim,
            intermediate_size=2 * shape.text_dim,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _clip_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=_CLIP_DIM,
            intermediate_size=2 * _CLIP_DIM,
            projection_dim=_CLIP_DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _transformer(shape: _Shape):
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        num_attention_heads=shape.num_attention_heads,
        attention_head_dim=shape.attention_head_dim,
        num_layers=shape.num_layers,
        num_single_layers=shape.num_single_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=shape.text_dim,
        pooled_projection_dim=_CLIP_DIM,
        rope_axes_dim=shape.rope_axes_dim,
    )


def _vae(shape: _Shape):
    from diffusers import AutoencoderKLHunyuanVideo

    # Four blocks give the released VAE's 8x spatial and 4x temporal compression.
    return AutoencoderKLHunyuanVideo(
        latent_channels=_LATENT_CHANNELS,
        block_out_channels=(shape.vae_channels,) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    )


def build_hunyuan(size: str, seed: int):
    """HunyuanVideo text-to-video: Llama and CLIP text encoders, dual-stream then single-stream blocks."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    shape = _SHAPES[size]
    tokenizer = llama_tokenizer()
    tokenizer_2 = clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _text_encoder(shape, tokenizer)
    text_encoder_2 = _clip_text_encoder(tokenizer_2)
    transformer = _transformer(shape)
    vae = _vae(shape)
    pipeline = HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )
    # A freshly built module stays in training mode, where any dropout would make runs differ.
    for component in (text_encoder, text_encoder_2, transformer, vae):
        component.eval()
    return pipeline


TINY_MODELS = (TinyModel("hunyuan", "hunyuan", build_hunyuan, _DEFAULTS),)
