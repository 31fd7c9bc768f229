import numpy as np
import pytest
from safetensors.numpy import save_file

from reins.directions import DirectionFileError, DirectionMetadata, load_direction, save_direction, vector_sha256
from tests.conftest import SHIPPED_DIRECTION


def metadata(hidden_size: int = 8) -> DirectionMetadata:
    return DirectionMetadata(
        model_id="test/model", family="wan", block_index=3, hidden_size=hidden_size, reference_norm=2.5,
        label_source="prompt_file", num_safe=4, num_unsafe=5,
    )


def test_round_trip_normalises_and_hashes(tmp_path):
    written = save_direction(tmp_path / "d.safetensors", np.arange(1, 9, dtype=np.float32), metadata())
    loaded = load_direction(tmp_path / "d.safetensors")
    assert np.isclose(np.linalg.norm(loaded.vector), 1.0)
    assert np.array_equal(loaded.vector, written.vector)
    assert loaded.metadata.sha256 == vector_sha256(loaded.vector)
    assert loaded.metadata.block_index == 3
    assert loaded.metadata.reference_norm == 2.5
    assert loaded.metadata.created_at


def test_altered_vector_is_detected(tmp_path):
    path = tmp_path / "d.safetensors"
    save_direction(path, np.ones(8, dtype=np.float32), metadata())
    original = load_direction(path)
    header = {k: v for k, v in __import__("safetensors").safe_open(str(path), "numpy").metadata().items()}
    altered = original.vector.copy()
    altered[[0, 1]] = altered[[1, 0]] * np.array([1.0, -1.0], dtype=np.float32)
    save_file({"direction": altered}, str(path), metadata=header)
    with pytest.raises(DirectionFileError, match="sha256"):
        load_direction(path)


def test_wrong_length_is_rejected(tmp_path):
    with pytest.raises(DirectionFileError, match="hidden_size is 8"):
        save_direction(tmp_path / "d.safetensors", np.ones(5, dtype=np.float32), metadata())


def test_zero_vector_is_rejected(tmp_path):
    with pytest.raises(DirectionFileError, match="norm"):
        save_direction(tmp_path / "d.safetensors", np.zeros(8, dtype=np.float32), metadata())


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DirectionFileError, match="not found"):
        load_direction(tmp_path / "absent.safetensors")


def test_shipped_direction_matches_tiny_model():
    direction = load_direction(SHIPPED_DIRECTION)
    assert direction.metadata.family == "wan"
    assert direction.metadata.hidden_size == 24
    assert direction.metadata.block_index == 2
