import numpy as np
import pytest

from reins.video import probe_mp4, provenance_comment, read_comment, write_mp4


def test_mp4_round_trip(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 16, 48, 3), dtype=np.uint8)
    comment = "reins model=a=b; window=0.0-0.5 #1 \\"
    path = write_mp4(frames, tmp_path / "v.mp4", fps=8, metadata={"comment": comment})
    assert read_comment(path) == comment
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


def test_video_without_comment(tmp_path):
    path = write_mp4(np.zeros((2, 16, 16, 3), dtype=np.uint8), tmp_path / "v.mp4")
    assert read_comment(path) == ""


def test_provenance_comment_formats_values():
    comment = provenance_comment({"model": "toy", "revision": None, "window": (0.0, 0.5), "token_gate": True,
                                  "adaptive": False, "strength": 2.0})
    assert comment == "reins model=toy revision=- window=0.0-0.5 token_gate=on adaptive=off strength=2.0"
