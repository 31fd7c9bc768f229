"""H.264 mp4 files: written in-process with PyAV, read back with the ffmpeg that imageio-ffmpeg ships.

Encoding in-process avoids starting an ffmpeg process per video, which cost more than generating a small video.
Neither needs torch, so the mock worker uses the same code.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np


def provenance_comment(fields: dict[str, object]) -> str:
    """Return the mp4 comment that records how a video was made, as "reins key=value ..." in the order given.

    A value of None is written as "-", a boolean as on or off, and a step window (a pair) as start-end.
    """
    def text(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, (tuple, list)):
            return "-".join(str(part) for part in value)
        return str(value)

    return " ".join(["reins", *(f"{key}={text(value)}" for key, value in fields.items())])


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 16, metadata: dict[str, str] | None = None) -> Path:
    """Encode uint8 frames of shape (frames, height, width, 3) as H.264 in yuv420p, which browsers play.

    `metadata` entries are written as mp4 metadata tags. The index goes before the media data (faststart), so
    browsers can start playing before the whole file has arrived.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 of shape (frames, height, width, 3), got {frames.dtype} {frames.shape}")
    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even height and width, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
    try:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for key, value in (metadata or {}).items():
            container.metadata[key] = value
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    finally:
        container.close()
    return path


def probe_mp4(path: str | Path) -> dict:
    """Return codec, width, height and frame count of a video file, read back by ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    info = next(reader)
    count = sum(1 for _ in reader)
    width, height = info["size"]
    return {"codec": info.get("codec", ""), "width": width, "height": height, "frames": count, "fps": info.get("fps")}


def read_comment(path: str | Path) -> str:
    """Return the comment tag of a video file, read back by ffmpeg, or "" when it has none."""
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                            capture_output=True, text=True, timeout=60, check=True)
    for line in result.stdout.splitlines():
        if line.startswith("comment="):
            # The ffmetadata format escapes "=", ";", "#" and "\\" inside values with a backslash.
            return re.sub(r"\\(.)", r"\1", line[len("comment="):])
    return ""
