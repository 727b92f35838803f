"""merge evolve on a local Ray of 2 workers: one task per candidate, the serial run's result."""

from __future__ import annotations

import json

import pytest

from mergekit_like.evolve.runner import EvolveOptions, run_evolve
from tests.evolve.conftest import candidate_scores, config

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs on this machine for this module's tests."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_run_equals_the_serial_run(local_ray, baseline, tmp_path, vits):
    out, data = baseline
    target = tmp_path / "out"
    on_ray = run_evolve(config(tmp_path, vits), target,
                        EvolveOptions(allow_code=True, quiet=True, ray="local"))
    assert candidate_scores(on_ray) == candidate_scores(data)
    assert on_ray["best"]["x"] == data["best"]["x"]
    assert (target / "model.safetensors").read_bytes() == \
        (out / "model.safetensors").read_bytes()
    saved = json.loads((target / "evolve_report.json").read_text())
    assert saved["evaluations"] == 12
    assert local_ray.is_initialized()  # a Ray the caller started is left running
