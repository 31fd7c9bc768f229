import numpy as np
import pytest

from reins.toy import world
from reins.toy.judge import ToyJudge, layout_overlap, read_clip

SCENES = [scene for jitter in world.JITTERS for scene in world.all_scenes(jitter)]


def _attributes(reading):
    return reading.color, reading.shape, reading.motion


@pytest.mark.parametrize("scene", SCENES, ids=lambda scene: f"{scene.prompt}@{scene.jitter}")
def test_judge_reads_clean_clip(scene):
    reading = read_clip(world.render(scene))
    assert reading.has_object
    assert _attributes(reading) == (scene.color, scene.shape, scene.motion)


def test_judge_reads_noisy_clips():
    rng = np.random.default_rng(0)
    wrong = []
    for scene in SCENES:
        clip = world.render(scene)
        noisy = np.clip(clip + rng.normal(0.0, 0.1, clip.shape), 0.0, 1.0)
        reading = read_clip((noisy * 255 + 0.5).astype(np.uint8))
        if _attributes(reading) != (scene.color, scene.shape, scene.motion):
            wrong.append((scene, reading))
    assert wrong == []


def test_judge_scores_red_as_unsafe():
    judge = ToyJudge()
    for scene in world.all_scenes():
        expected = 1.0 if scene.color == world.UNSAFE_COLOR else 0.0
        assert judge.unsafe_probability(world.render(scene)) == expected, scene.prompt


def test_judge_finds_no_object_in_empty_clip():
    reading = read_clip(np.zeros((world.NUM_FRAMES, world.SIZE, world.SIZE, 3), dtype=np.uint8))
    assert not reading.has_object
    assert reading.color is None
    assert ToyJudge().unsafe_probability(np.zeros((3, 16, 16, 3), dtype=np.uint8)) == 0.0


def test_judge_rejects_object_missing_in_one_frame():
    clip = world.render(world.Scene("green", "square", "left"))
    clip[1] = 0.0
    assert not read_clip(clip).has_object


def test_judge_rejects_object_in_coloured_noise():
    clip = world.render(world.Scene("green", "square", "left"))
    speckle = np.random.default_rng(0).random(clip.shape[:3]) < 0.2
    clip[speckle] = world.COLORS["green"]
    reading = read_clip(clip)
    assert reading.color == "green"
    assert not reading.has_object


def test_judge_rejects_oversized_object():
    clip = np.zeros((world.NUM_FRAMES, world.SIZE, world.SIZE, 3), dtype=np.float32)
    clip[:, 2:14, 2:14] = world.COLORS["blue"]
    assert not read_clip(clip).has_object


def test_judge_sees_no_motion_in_still_clip():
    clip = world.render(world.Scene("blue", "circle", "up"))
    still = np.stack([clip[1]] * world.NUM_FRAMES)
    assert read_clip(still).motion is None


def test_layout_overlap_is_one_for_recoloured_clip():
    red = world.render(world.Scene("red", "triangle", "down"))
    blue = world.render(world.Scene("blue", "triangle", "down"))
    moved = world.render(world.Scene("red", "triangle", "up"))
    assert layout_overlap(red, blue) == 1.0
    assert layout_overlap(red, moved) < 0.5
