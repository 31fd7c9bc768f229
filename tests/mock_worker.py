"""A worker process that consumes the real RQ queue but renders frames with numpy instead of a pipeline.

It runs the production job function, job store, storage and encoder; only the diffusion model is replaced. Run as
`python -m tests.mock_worker` with the same REINS_* environment as the API.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from app.settings import Settings
from worker.main import run_worker


class MockRenderer:
    """Renders a deterministic gradient video of the requested size, reporting every step."""

    def render(self, record: dict, on_step, image=None) -> tuple[np.ndarray, dict]:
        request = record["request"]
        for step in range(request["num_inference_steps"]):
            on_step(step, request["num_inference_steps"])
        rng = np.random.default_rng(request["seed"])
        shape = (request["num_frames"], request["height"], request["width"], 3)
        frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if image is not None:
            # The first frame is the input image, as in image-to-video models.
            frames[0] = np.asarray(image)
        return frames, {"calls_steered": 0}


if __name__ == "__main__":
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if "torch" in sys.modules:
        raise SystemExit("the mock worker must not import torch")
    run_worker(Settings(), renderer=MockRenderer())
