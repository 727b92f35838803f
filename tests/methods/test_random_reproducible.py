"""Random methods give the same bytes whatever the order, thread count or process.

Every random mask comes from ``TensorContext.generator``, seeded from (--seed, tensor
name) only. Also the end-to-end check of one tensor of a CLI dare_ties merge.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from mergekit_like.methods import REGISTRY, TensorContext
from tests.conftest import load_tensors, write_recipe
from tests.methods.draws import documented_draws

RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")


def _inputs(seed: int, shape: tuple[int, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    return [base + torch.randn(shape, generator=gen) for _ in range(3)], base


def _merge(method: str, name: str, tensors: list[torch.Tensor], base: torch.Tensor,
           seed: int = 7) -> torch.Tensor:
    m = REGISTRY[method]
    mp = [m.model_params.model_validate({"weight": w, "density": 0.4})
          for w in (1.0, 0.5, 0.25)]
    return m.merge(tensors, base, mp, m.params(), TensorContext(name, seed))


def test_order_of_tensors_does_not_matter():
    a, b = _inputs(0, (64, 48)), _inputs(1, (32, 16))
    for method in RANDOM_METHODS:
        first = [_merge(method, "a", *a), _merge(method, "b", *b)]
        second = [_merge(method, "b", *b), _merge(method, "a", *a)][::-1]
        assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True)), method
        assert not torch.equal(first[0], _merge(method, "a", *a, seed=8)), method


def test_thread_count_does_not_matter():
    tensors, base = _inputs(2, (192, 256))  # above torch's grain size: sums run in parallel
    methods = ("dare_ties", "della")  # random drop + L1 rescale; ranks + random drop
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = {m: _merge(m, "w", tensors, base) for m in methods}
        torch.set_num_threads(2)
        two = {m: _merge(m, "w", tensors, base) for m in methods}
    finally:
        torch.set_num_threads(before)
    for m in methods:
        assert torch.equal(one[m], two[m]), m


def _sha(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_cli_runs_same_seed_same_bytes_in_another_process(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, f"""
merge_method: dare_ties
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
    parameters: {{weight: 0.7, density: 0.5}}
  - model: {llama_family['code']}
    parameters: {{weight: 0.3, density: 0.3}}
""")
    assert run_cli(recipe, tmp_path / "s7", "--seed", "7", "--quiet").code == 0
    assert run_cli(recipe, tmp_path / "s8", "--seed", "8", "--quiet").code == 0
    env = {**os.environ, "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "mergekit_like", str(recipe), str(tmp_path / "p7"),
                    "--seed", "7", "--quiet"], check=True, env=env, capture_output=True)
    assert _sha(tmp_path / "s7") == _sha(tmp_path / "p7")
    assert _sha(tmp_path / "s7") != _sha(tmp_path / "s8")

    # one tensor, recomputed from its formula with the masks drawn as documented
    name = "model.layers.1.mlp.up_proj.weight"
    base, math_, code = (load_tensors(llama_family[k])[name] for k in ("base", "math", "code"))
    trimmed = []
    for j, (x, w, density) in enumerate(((math_, 0.7, 0.5), (code, 0.3, 0.3))):
        d = x - base
        kept = d * (documented_draws(7, name, j, d.shape) < density)
        trimmed.append(w * kept * d.abs().sum() / kept.abs().sum())
    sign = torch.where(trimmed[0] + trimmed[1] >= 0, 1.0, -1.0)
    mixed = sum(t * (t.sign() == sign) for t in trimmed)
    torch.testing.assert_close(load_tensors(tmp_path / "s7")[name], base + mixed)
