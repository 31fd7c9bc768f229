import pytest

from reins.families import family_for_pipeline, get_family
from reins.families.wan import WAN


@pytest.mark.parametrize("frames", [1, 5, 9, 81])
def test_wan_accepts_4k_plus_1_frames(frames):
    assert WAN.frame_count_error(frames) is None


@pytest.mark.parametrize(("frames", "nearest"), [(2, 1), (4, 5), (15, 13), (16, 17), (80, 81)])
def test_wan_frame_error_names_nearest(frames, nearest):
    message = WAN.frame_count_error(frames)
    assert f"got {frames}" in message
    assert f"nearest valid value is {nearest}" in message


@pytest.mark.parametrize(("size", "nearest"), [(36, 32), (40, 32), (41, 48), (830, 832)])
def test_wan_size_error_names_nearest(size, nearest):
    assert f"nearest valid value is {nearest}" in WAN.size_error(size)


def test_wan_size_below_minimum():
    assert WAN.size_error(8) == "must be at least 16, got 8"
    assert WAN.size_error(16) is None


def test_unknown_family_lists_known():
    with pytest.raises(ValueError, match="known families: .*wan"):
        get_family("sora")


def test_unknown_pipeline_class_is_rejected():
    class FluxPipeline:
        pass

    with pytest.raises(ValueError, match="FluxPipeline"):
        family_for_pipeline(FluxPipeline())
