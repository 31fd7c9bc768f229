"""Direction discovery: `reins.spca.spca_binary` on pooled activations with binary labels.

Times repeated `spca_binary` calls on 20,000 x 5,120 float32 activations (about 410 MB of random normal values,
half of the rows labelled 1 and that class shifted by 0.05), and the figure is the median. Then it measures, with
tracemalloc (numpy reports its array buffers to it), the peak memory the call allocates beyond its input at several
feature sizes. That memory grows linearly with the number of features and does not depend on the number of rows
past the first chunk.

Run: python bench/discovery.py [--rows N] [--features D] [--repeats N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine_facts, percentiles, rounded, setup_logging  # noqa: E402

from reins.spca import spca_binary  # noqa: E402

logger = logging.getLogger("bench.discovery")

TARGET_SECONDS = 1.0


def make_data(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features_array = rng.standard_normal((rows, features), dtype=np.float32)
    labels = (np.arange(rows) % 2).astype(np.int64)
    rng.shuffle(labels)
    features_array[labels == 1] += 0.05
    return features_array, labels


def peak_extra_bytes(features: np.ndarray, labels: np.ndarray) -> int:
    """Return the peak bytes that numpy and Python allocate during one `spca_binary` call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    spca_binary(features, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - baseline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="activation rows (default 20000)")
    parser.add_argument("--features", type=int, default=5_120, help="features per row (default 5120)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls (default 7)")
    parser.add_argument("--memory-rows", type=int, default=10_000,
                        help="rows of the memory measurements (default 10000)")
    args = parser.parse_args()
    setup_logging()

    features, labels = make_data(args.rows, args.features)
    logger.info("data: %d x %d float32, %.0f MB", args.rows, args.features, features.nbytes / 1e6)
    direction = spca_binary(features, labels)  # warm-up
    expected = features[labels == 0].mean(axis=0, dtype=np.float64) - features[labels == 1].mean(axis=0, dtype=np.float64)
    cosine = float(direction @ expected / np.linalg.norm(expected))
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        spca_binary(features, labels)
        seconds.append(time.perf_counter() - started)
    del features
    median = float(np.median(seconds))

    memory = []
    for rows, width in ((args.memory_rows, args.features // 4), (args.memory_rows, args.features // 2),
                        (args.memory_rows, args.features), (args.memory_rows // 2, args.features)):
        data, data_labels = make_data(rows, width, seed=1)
        extra = peak_extra_bytes(data, data_labels)
        memory.append({"rows": rows, "features": width, "input_bytes": data.nbytes, "peak_extra_bytes": extra,
                       "peak_extra_bytes_per_feature": round(extra / width, 1)})
        logger.info("rows=%d features=%d: peak extra %.1f MB", rows, width, extra / 1e6)
        del data
    per_feature = [entry["peak_extra_bytes_per_feature"] for entry in memory[:3]]
    linear = max(per_feature) / min(per_feature) < 1.05

    emit({
        "name": "discovery",
        "value": round(median, 4),
        "unit": "seconds (median of spca_binary calls)",
        "target": f"< {TARGET_SECONDS}",
        "met": bool(median < TARGET_SECONDS),
        "seconds": rounded(seconds),
        "seconds_percentiles": percentiles(seconds, (50, 90)),
        "rows": args.rows,
        "features": args.features,
        "dtype": "float32",
        "cosine_with_class_mean_difference": round(cosine, 6),
        "memory": memory,
        "memory_linear_in_features": bool(linear),
        "memory_note": "peak extra bytes per feature are the same at every feature size for fixed rows; they are "
                       "bounded by two float64 chunks of 4096 rows (65536 bytes per feature), whatever the rows",
        "machine": machine_facts(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
