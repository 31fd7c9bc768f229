import numpy as np
import pytest

from reins.judges import ImageClassifierJudge, sample_frame_indices, save_tiny_classifier


def test_frame_sampling_includes_ends():
    assert sample_frame_indices(9, 4) == [0, 3, 5, 8]
    assert sample_frame_indices(3, 4) == [0, 1, 2]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return save_tiny_classifier(str(tmp_path_factory.mktemp("judge")))


def test_tiny_classifier_judge_scores(classifier):
    judge = ImageClassifierJudge(classifier)
    video = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    score = judge.unsafe_probability(video)
    assert 0.0 <= score <= 1.0
    assert judge.unsafe_probability(video) == score
    assert judge.unsafe_probability(255 - video) != score


def test_unknown_label_lists_classes(classifier):
    with pytest.raises(ValueError, match=r"classes are \['safe', 'unsafe'\]"):
        ImageClassifierJudge(classifier, unsafe_labels=["nsfw"])
