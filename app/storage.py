"""Video storage behind one interface. The local-folder backend is the default."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def video_key(job_id: str) -> str:
    """Return the storage key of a job's video."""
    return f"{job_id}.mp4"


def input_image_key(job_id: str) -> str:
    """Return the storage key of a job's input image, as fitted to the video size by the API."""
    return f"inputs/{job_id}.png"


class Storage(Protocol):
    """Object store for finished videos. Keys are relative, slash-separated names such as `job_ab12.mp4`."""

    def put_file(self, key: str, source: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def open_path(self, key: str) -> Path | None:
        """Return a local path to read the object from, or None if it does not exist."""
        ...

    def delete(self, key: str) -> None: ...


class LocalStorage:
    """Stores objects as files under one folder; writes are atomic (temporary file, then rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def put_file(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        os.close(handle)
        try:
            shutil.copyfile(source, temporary)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(prefix="reins-upload-") as handle:
            handle.write(data)
            handle.flush()
            self.put_file(key, Path(handle.name))

    def open_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
