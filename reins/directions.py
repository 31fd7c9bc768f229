"""Direction files: a unit steering vector and the metadata that records where and how it was made.

A direction file is a safetensors file with one float32 tensor, `direction`, of shape (hidden_size,) and norm 1, and
string metadata. This module uses numpy only, so the API can read metadata without torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

FORMAT_VERSION = "1"
TENSOR_NAME = "direction"


class DirectionFileError(ValueError):
    """A direction file is missing, malformed, or does not match the model it is used with."""


@dataclass(frozen=True)
class DirectionMetadata:
    """Provenance of a direction: the model and block it belongs to and the data it came from."""

    model_id: str
    family: str
    block_index: int
    hidden_size: int
    # Mean L2 norm of the block's output tokens on the discovery prompts. Strengths are multiples of this norm.
    reference_norm: float
    label_source: str
    num_safe: int
    num_unsafe: int
    method: str = "class_mean_difference"
    model_revision: str = ""
    probe_accuracy: float | None = None
    # Mean projections of the safe and unsafe discovery samples on the direction; they calibrate the probe score.
    probe_safe_mean: float | None = None
    probe_unsafe_mean: float | None = None
    # Fractions of the denoising schedule whose hidden states were averaged.
    step_window: list[float] | None = None
    sha256: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def probe_reference(self) -> tuple[float, float] | None:
        """Return (safe mean, unsafe mean) projections for normalising probe scores, if the file has distinct ones."""
        safe, unsafe = self.probe_safe_mean, self.probe_unsafe_mean
        if safe is None or unsafe is None or safe == unsafe:
            return None
        return safe, unsafe


@dataclass(frozen=True)
class Direction:
    """A unit vector in a block's hidden-state space, with its metadata."""

    vector: np.ndarray
    metadata: DirectionMetadata

    @property
    def probe_reference(self) -> tuple[float, float] | None:
        """Return (safe mean, unsafe mean) projections for normalising probe scores, if the file has distinct ones."""
        return self.metadata.probe_reference


def vector_sha256(vector: np.ndarray) -> str:
    """Return the sha256 of the vector's float32 little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()


def save_direction(path: str | Path, vector: np.ndarray, metadata: DirectionMetadata) -> Direction:
    """Normalise `vector`, write it with `metadata` to `path`, and return what was written."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != metadata.hidden_size:
        raise DirectionFileError(f"vector has {vector.shape[0]} elements but hidden_size is {metadata.hidden_size}")
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise DirectionFileError(f"cannot normalise a direction with norm {norm}")
    vector = vector / norm
    values = asdict(metadata)
    values["sha256"] = vector_sha256(vector)
    stored = DirectionMetadata(**values)

    header = {key: json.dumps(value) for key, value in asdict(stored).items()}
    header["format_version"] = FORMAT_VERSION
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({TENSOR_NAME: vector}, str(path), metadata=header)
    # Workers and API containers run as other users, so the file is readable by all, like a model file.
    os.chmod(path, 0o644)
    return Direction(vector=vector, metadata=stored)


def load_direction(path: str | Path) -> Direction:
    """Read a direction file, checking its format version, shape, norm and sha256."""
    path = Path(path)
    if not path.is_file():
        raise DirectionFileError(f"direction file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
            vector = handle.get_tensor(TENSOR_NAME)
    except Exception as error:  # safetensors raises several types for a damaged file.
        raise DirectionFileError(f"cannot read direction file {path}: {error}") from error

    if header.get("format_version") != FORMAT_VERSION:
        raise DirectionFileError(
            f"{path} has format_version {header.get('format_version')!r}; this version reads {FORMAT_VERSION!r}"
        )
    try:
        values = {name: json.loads(header[name]) for name in DirectionMetadata.__dataclass_fields__ if name in header}
        metadata = DirectionMetadata(**values)
    except (TypeError, ValueError) as error:
        raise DirectionFileError(f"{path} has invalid metadata: {error}") from error

    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != metadata.hidden_size:
        raise DirectionFileError(f"{path}: vector has {vector.shape[0]} elements but its metadata has hidden_size {metadata.hidden_size}")
    if vector_sha256(vector) != metadata.sha256:
        raise DirectionFileError(f"{path}: sha256 of the vector does not match the metadata; the file was altered")
    if abs(float(np.linalg.norm(vector)) - 1.0) > 1e-4:
        raise DirectionFileError(f"{path}: the vector is not unit length")
    return Direction(vector=vector, metadata=metadata)
