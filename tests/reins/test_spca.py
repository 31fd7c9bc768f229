import numpy as np
import pytest

from reins.spca import label_kernel, spca, spca_binary


def planted(samples: int, dims: int, separation: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dims)
    direction /= np.linalg.norm(direction)
    labels = rng.integers(0, 2, size=samples)
    # Class 0 (safe) sits at +direction, class 1 (unsafe) at -direction, with unit Gaussian noise.
    features = rng.normal(size=(samples, dims)) + np.where(labels[:, None] == 0, 1.0, -1.0) * separation * direction
    return features, labels, direction


def test_binary_recovers_planted_direction():
    features, labels, direction = planted(400, 32, separation=3.0)
    assert spca_binary(features, labels) @ direction > 0.99


@pytest.mark.parametrize("kernel", ["delta", "linear"])
def test_binary_path_equals_general_form(kernel):
    features, labels, _ = planted(300, 24, separation=1.0, seed=1)
    fast = spca_binary(features, labels)
    (general,), values = spca(features, label_kernel(labels, kernel), num_components=1)
    assert abs(fast @ general) > 0.9999
    assert values[0] > 0


def test_general_form_handles_three_classes():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=600)
    centres = np.zeros((3, 16))
    centres[1, 0] = 3.0
    centres[2, 0] = -3.0
    features = rng.normal(size=(600, 16)) + centres[labels]
    (component,), _ = spca(features, label_kernel(labels, "delta"))
    assert abs(component[0]) > 0.99


def test_binary_streams_chunks():
    features, labels, _ = planted(1000, 8, separation=1.0, seed=3)
    assert np.allclose(spca_binary(features, labels, chunk_rows=7), spca_binary(features, labels))


def test_binary_rejects_one_class():
    with pytest.raises(ValueError, match="both classes"):
        spca_binary(np.ones((4, 3)), np.zeros(4, dtype=int))


def test_binary_rejects_other_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        spca_binary(np.ones((3, 3)), np.array([0, 1, 2]))


def test_kernel_shape_is_checked():
    with pytest.raises(ValueError, match="kernel_matrix must be 5 x 5"):
        spca(np.ones((5, 2)), np.ones((4, 4)))
