"""CogVideoX adapters: input rules, detection, block layout and guidance batching on the tiny pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reins.families import family_for_pipeline, get_family
from reins.families.cogvideox import COGVIDEOX, COGVIDEOX_I2V
from reins.families.wan import WAN_I2V
from reins.pipelines import GenerationParams, _call_arguments, generate
from reins.tiny import TINY_MODELS, build_pipeline

FAMILIES = [COGVIDEOX, COGVIDEOX_I2V]


@pytest.fixture(scope="module", params=["cogvideox", "cogvideox-i2v"])
def tiny(request):
    name = request.param
    pipeline = build_pipeline(name, size="tiny", seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return name, pipeline


def _params(name: str, guidance_scale: float) -> GenerationParams:
    defaults = TINY_MODELS[name].defaults["tiny"]
    return GenerationParams(prompt="a red car", num_frames=defaults.num_frames, height=defaults.height,
                            width=defaults.width, num_inference_steps=2, guidance_scale=guidance_scale, seed=1)


def _image(name: str) -> Image.Image | None:
    if get_family(name).image_input != "required":
        return None
    defaults = TINY_MODELS[name].defaults["tiny"]
    return Image.fromarray(np.full((defaults.height, defaults.width, 3), 128, dtype=np.uint8))


def _first_block_outputs(pipeline, name: str, guidance_scale: float) -> list:
    family = get_family(name)
    block, _ = family.blocks(pipeline.transformer)[0]
    outputs = []
    handle = block.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        generate(pipeline, _params(name, guidance_scale), image=_image(name))
    finally:
        handle.remove()
    return outputs


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
@pytest.mark.parametrize("frames", [1, 5, 9, 13, 49])
def test_cogvideox_accepts_4k_plus_1_frames(family, frames):
    assert family.frame_count_error(frames) is None


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
@pytest.mark.parametrize(("frames", "nearest"), [(2, 1), (8, 9), (48, 49), (50, 49), (51, 49), (52, 53)])
def test_cogvideox_frame_error_names_nearest(family, frames, nearest):
    message = family.frame_count_error(frames)
    assert f"got {frames}" in message
    assert f"nearest valid value is {nearest}" in message


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
@pytest.mark.parametrize(("size", "nearest"), [(24, 16), (40, 32), (488, 480), (712, 704), (730, 736)])
def test_cogvideox_size_error_names_nearest(family, size, nearest):
    message = family.size_error(size)
    assert f"got {size}" in message
    assert f"nearest valid value is {nearest}" in message


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_cogvideox_real_defaults_are_valid(family):
    assert (family.default_height, family.default_width, family.default_num_frames) == (480, 720, 49)
    assert family.size_error(family.default_height) is None
    assert family.size_error(family.default_width) is None
    assert family.frame_count_error(family.default_num_frames) is None
    assert family.size_error(8) == "must be at least 16, got 8"


def test_cogvideox_guidance_threshold():
    for family in FAMILIES:
        assert family.guidance_argument == "guidance_scale"
        assert not family.uses_guidance(1.0)
        assert family.uses_guidance(1.01)


def test_cogvideox_detected_from_pipeline(tiny):
    name, pipeline = tiny
    assert family_for_pipeline(pipeline) is get_family(name)


def test_cogvideox_depth_and_hidden_size(tiny):
    name, pipeline = tiny
    family = get_family(name)
    transformer = pipeline.transformer
    assert family.depth(transformer) == transformer.config.num_layers
    assert family.hidden_size(transformer) == transformer.norm_final.normalized_shape[0]


def test_cogvideox_hidden_index_is_video(tiny):
    name, pipeline = tiny
    defaults = TINY_MODELS[name].defaults["tiny"]
    config = pipeline.transformer.config
    latent_frames = (defaults.num_frames - 1) // 4 + 1
    if config.patch_size_t is not None:
        # The 1.5 layout pads the latent frames to a multiple of patch_size_t and packs that many into one token.
        latent_frames = -(-latent_frames // config.patch_size_t)
    patches_per_frame = (defaults.height // 8 // config.patch_size) * (defaults.width // 8 // config.patch_size)

    output = _first_block_outputs(pipeline, name, guidance_scale=1.0)[0]
    index = get_family(name).block_lists[0].hidden_state_index
    assert isinstance(output, tuple)
    assert output[index].shape[1] == latent_frames * patches_per_frame
    assert output[1 - index].shape[1] == get_family(name).text_token_limit


def test_cogvideox_guidance_doubles_batch(tiny):
    name, pipeline = tiny
    guided = _first_block_outputs(pipeline, name, guidance_scale=5.0)
    unguided = _first_block_outputs(pipeline, name, guidance_scale=1.0)
    # One block call per step in both cases, on two rows (unconditional, conditional) only when guided.
    assert len(guided) == len(unguided) == 2
    assert guided[0][0].shape[0] == 2
    assert unguided[0][0].shape[0] == 1


def test_cogvideox_pipeline_rounds_frames_down(tiny):
    name, pipeline = tiny
    params = GenerationParams(**{**_params(name, 1.0).__dict__, "num_frames": 12})
    assert generate(pipeline, params, image=_image(name)).shape[0] == 9


def test_cogvideox_pipeline_rejects_odd_latent_side(tiny):
    name, pipeline = tiny
    # 40 passes the pipeline's own multiple-of-8 check, but 5 latents do not split into 2x2 patches.
    params = GenerationParams(**{**_params(name, 1.0).__dict__, "height": 40, "width": 40})
    image = Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)) if _image(name) is not None else None
    with pytest.raises(RuntimeError):
        generate(pipeline, params, image=image)


def test_cogvideox_i2v_requires_image():
    with pytest.raises(ValueError, match="need an input image"):
        _call_arguments(COGVIDEOX_I2V, [_params("cogvideox-i2v", 5.0)], image=None)


def test_image_repeated_per_sample_for_batch():
    image = _image("cogvideox-i2v")
    batch = [_params("cogvideox-i2v", 5.0), _params("cogvideox-i2v", 5.0)]
    assert _call_arguments(COGVIDEOX_I2V, batch, image)["image"] == [image, image]
    assert _call_arguments(COGVIDEOX_I2V, batch[:1], image)["image"] is image
    # Wan encodes one image for the whole batch, so its argument stays a single image.
    assert _call_arguments(WAN_I2V, batch, image)["image"] is image


def test_cogvideox_seed_fixes_weights():
    first = build_pipeline("cogvideox", size="tiny", seed=5).transformer.state_dict()
    second = build_pipeline("cogvideox", size="tiny", seed=5).transformer.state_dict()
    other = build_pipeline("cogvideox", size="tiny", seed=6).transformer.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)
