"""A worker process that consumes the real RQ queue but renders frames with numpy instead of a pipeline.

It runs the production job function, job store, storage and encoder; only the diffusion model is replaced. Run as
`python -m tests.mock_worker` with the same REINS_* environment as the API.

A job whose prompt starts with "FAIL" raises in the renderer after its first step, so tests can produce a failed
job on purpose. The worker records it as failed with the error code "internal_error".

REINS_TEST_MOCK_STEP_SECONDS (default 0) makes every step take that long, so fault tests can act mid-job.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np

from app.settings import Settings
from worker.main import run_worker


FAILURE_PROMPT_PREFIX = "FAIL"


class MockRenderer:
    """Renders a deterministic gradient video of the requested size, reporting every step."""

    def render(self, record: dict, on_step, image=None) -> tuple[np.ndarray, dict]:
        request = record["request"]
        step_seconds = float(os.environ.get("REINS_TEST_MOCK_STEP_SECONDS", "0"))
        for step in range(request["num_inference_steps"]):
            time.sleep(step_seconds)
            on_step(step, request["num_inference_steps"])
            if request["prompt"].startswith(FAILURE_PROMPT_PREFIX):
                raise RuntimeError(f"mock failure: the prompt starts with {FAILURE_PROMPT_PREFIX!r}")
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
