"""The load script (bench/load.py) at a small size: every accepted job finishes, and no submission runs twice."""

from __future__ import annotations

import pytest

from bench.load import run_load

pytestmark = pytest.mark.integration


def test_load_loses_and_duplicates_nothing(tiny_model_dir):
    result = run_load(jobs=200, clients=16, workers=2, replay_every=10, fail_every=50, submit_timeout=60,
                      finish_timeout=60, model_dir=tiny_model_dir)

    assert result["submitted"] == 200, result
    assert result["accepted"] == 200, result
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["job_records_in_redis"] == 200, result
    assert result["replays"]["same_id"] == result["replays"]["sent"] == 20, result
    assert result["failed"] == result["expected_failures"] == 4, result
    assert result["completed"] == 196, result
    assert result["processes_exited_early"] == [], result
