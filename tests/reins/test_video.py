import numpy as np
import pytest

from reins.video import probe_mp4, write_mp4


def test_mp4_round_trip(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 16, 48, 3), dtype=np.uint8)
    path = write_mp4(frames, tmp_path / "v.mp4", fps=8, metadata={"comment": "reins test"})
    info = probe_mp4(path)
    assert info["codec"].startswith("h264")
    assert (info["frames"], info["width"], info["height"]) == (5, 48, 16)
    # faststart puts the index (moov) before the media data (mdat), so browsers can start playing at once.
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


@pytest.mark.parametrize("shape", [(5, 15, 16, 3), (5, 16, 16), (5, 16, 16, 4)])
def test_invalid_frames_are_rejected(tmp_path, shape):
    with pytest.raises(ValueError):
        write_mp4(np.zeros(shape, dtype=np.uint8), tmp_path / "v.mp4")
