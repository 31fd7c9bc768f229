"""H.264 mp4 encoding through imageio-ffmpeg; numpy only, so the mock worker needs no torch."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 16, metadata: dict[str, str] | None = None) -> Path:
    """Encode uint8 frames of shape (frames, height, width, 3) as H.264 in yuv420p, which browsers play.

    `metadata` entries are written as mp4 metadata tags (`-metadata key=value`).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 of shape (frames, height, width, 3), got {frames.dtype} {frames.shape}")
    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even height and width, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = ["-movflags", "+faststart"]
    for key, value in (metadata or {}).items():
        extra += ["-metadata", f"{key}={value}"]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=None,
        bitrate=None,
        macro_block_size=1,
        output_params=["-crf", "18", "-preset", "veryfast", *extra],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def probe_mp4(path: str | Path) -> dict:
    """Return codec, width, height and frame count of a video file, read back by ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    info = next(reader)
    count = sum(1 for _ in reader)
    width, height = info["size"]
    return {"codec": info.get("codec", ""), "width": width, "height": height, "frames": count, "fps": info.get("fps")}
