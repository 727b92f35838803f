"""model_wide_trim: the pre-pass's bounds against torch.cat + topk over each whole model, the
methods with those bounds, the CLI merge against TIES written out, and the errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mergekit_like.errors import PlanError
from mergekit_like.execute.global_trim import context_bounds, model_trim_bounds
from mergekit_like.io.reader import TensorReader
from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.plan.build import Plan, plan_from_file
from mergekit_like.plan.trims import ModelTrim
from tests.conftest import load_tensors, write_recipe

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def _recipe(f: dict[str, Path], method: str, models: list[tuple[str, str]],
            params: str = "model_wide_trim: true", dtype: str = "float32") -> str:
    lines = [f"merge_method: {method}", f"base_model: {f['base']}", "models:"]
    for name, mp in models:
        lines += [f"  - model: {f[name]}", f"    parameters: {mp}"]
    return "\n".join([*lines, f"parameters: {{{params}}}", f"dtype: {dtype}", ""])


def _plan(tmp_path: Path, text: str) -> Plan:
    return plan_from_file(write_recipe(tmp_path, text))


def _bounds(plan: Plan, chunk_bytes: int = 64 * 2**20):
    with TensorReader() as reader:
        return model_trim_bounds(plan, reader, plan.compute_dtype, "cpu", chunk_bytes)


def _all_magnitudes(base: Path, model: Path, dtype: torch.dtype) -> torch.Tensor:
    """|x - base| of every tensor of the model, flattened and concatenated (the test's own)."""
    b, x = load_tensors(base), load_tensors(model)
    return torch.cat([(x[n].to(dtype) - b[n].to(dtype)).abs().reshape(-1) for n in sorted(b)])


def _kth_largest(mags: torch.Tensor, k: int) -> float:
    return float(torch.topk(mags.double(), k).values[-1])


@pytest.fixture(scope="module")
def tied_family(tmp_path_factory, llama_family) -> dict[str, Path]:
    """Zero base; fine-tunes whose entries are multiples of 0.25 (many equal magnitudes)."""
    root = tmp_path_factory.mktemp("tied")
    gen = torch.Generator().manual_seed(7)
    out = {}
    for i, name in enumerate(("base", "p", "q")):
        folder = root / name
        shutil.copytree(llama_family["base"], folder)
        tensors = {n: (torch.zeros_like(t) if i == 0 else
                       torch.randint(-6, 7, t.shape, generator=gen).float() * 0.25)
                   for n, t in load_tensors(llama_family["base"]).items()}
        from safetensors.torch import save_file

        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        out[name] = folder
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_ties_threshold_is_the_kth_largest_over_the_whole_model(tmp_path, llama_family, dtype):
    f = llama_family
    plan = _plan(tmp_path, _recipe(f, "ties", [("math", "{density: 0.3}"),
                                               ("code", "{density: 0.71}"),
                                               ("chat", "{density: 1.0}")], dtype=dtype))
    bounds = _bounds(plan)
    index = {m.ref: i for i, m in enumerate(plan.models)}
    for name, density in (("math", 0.3), ("code", 0.71)):
        mags = _all_magnitudes(f["base"], f[name], DTYPES[dtype])
        low, high = bounds[index[str(f[name])]]
        assert low == _kth_largest(mags, int(density * mags.numel()))
        assert high == float("inf")
    assert bounds[index[str(f["chat"])]] is None  # density 1: kept whole, not ranked
    assert bounds[index[str(f["base"])]] is None


def test_bounds_do_not_depend_on_row_chunks_and_count_ties(tmp_path, tied_family):
    f = tied_family
    plan = _plan(tmp_path, _recipe(f, "ties", [("p", "{density: 0.4}"), ("q", "{density: 0.9}")]))
    whole, chunked = _bounds(plan), _bounds(plan, chunk_bytes=1000)
    assert whole == chunked
    index = {m.ref: i for i, m in enumerate(plan.models)}
    for name, density in (("p", 0.4), ("q", 0.9)):
        mags = _all_magnitudes(f["base"], f[name], torch.float32)
        low = whole[index[str(f[name])]][0]
        assert low == _kth_largest(mags, int(density * mags.numel()))
        assert (mags >= low).sum() > int(density * mags.numel())  # ties at the threshold kept


@pytest.mark.parametrize("family", ["llama_family", "tied_family"])
def test_breadcrumbs_bounds_are_the_ranks_of_the_kept_band(tmp_path, family, request):
    f = request.getfixturevalue(family)
    a, b = ("math", "code") if "math" in f else ("p", "q")
    plan = _plan(tmp_path, _recipe(f, "breadcrumbs", [(a, "{density: 0.5, gamma: 0.1}"),
                                                      (b, "{density: 0.95, gamma: 0.2}")]))
    bounds = _bounds(plan)
    index = {m.ref: i for i, m in enumerate(plan.models)}
    for name, density, gamma in ((a, 0.5, 0.1), (b, 0.95, 0.2)):
        mags = _all_magnitudes(f["base"], f[name], torch.float32)
        n = mags.numel()
        keep, n_top = int(density * n), int(gamma * n)
        n_top = min(n_top, n - keep)  # density + gamma > 1: fewer large entries dropped
        ordered = torch.sort(mags, descending=True).values
        assert bounds[index[str(f[name])]] == (float(ordered[n_top + keep - 1]),
                                               float(ordered[n_top]))


def test_model_trim_ranks():
    assert ModelTrim("magnitude", 0.3).ranks(10) == (3, 0)
    assert ModelTrim("magnitude", 0.05).ranks(10) == (0, 0)  # nothing kept
    assert ModelTrim("outliers", 0.5, 0.1).ranks(20) == (12, 3)
    assert ModelTrim("outliers", 0.9, 0.3).ranks(10) == (10, 2)  # drops 1 largest, not 3
    assert ModelTrim("outliers", 0.5, 0.01).ranks(20) == (10, 0)  # no large entry dropped


def test_ties_with_bounds_keeps_at_or_above_the_threshold():
    m = REGISTRY["ties"]
    base = torch.ones(5)
    d1 = torch.tensor([3.0, -1.0, 0.5, -2.0, 1.0])
    d2 = torch.tensor([-1.0, 2.0, 1.5, 0.5, -0.25])
    mp = [m.model_params.model_validate({"weight": w, "density": 0.5}) for w in (1.0, 0.5)]
    params = m.params.model_validate({"model_wide_trim": True})
    ctx = TensorContext("t", 0, trim_bounds=((1.0, float("inf")), (0.5, float("inf"))))
    out = m.merge([base + d1, base + d2], base, mp, params, ctx)
    t1 = torch.tensor([3.0, -1.0, 0.0, -2.0, 1.0])          # |d1| >= 1 (4 of 5 kept)
    t2 = 0.5 * torch.tensor([-1.0, 2.0, 1.5, 0.5, 0.0])     # |d2| >= 0.5
    elected = torch.where(t1 + t2 >= 0, 1.0, -1.0)
    k1, k2 = (torch.sign(t1) == elected).float(), (torch.sign(t2) == elected).float()
    den = k1 + 0.5 * k2
    expected = base + (t1 * k1 + t2 * k2) / torch.where(den == 0, 1.0, den)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="model_wide_trim needs magnitude bounds"):
        m.merge([base + d1, base + d2], base, mp, params, TensorContext("t"))


def test_breadcrumbs_with_bounds_keeps_the_band():
    m = REGISTRY["breadcrumbs"]
    base = torch.zeros(6)
    d = torch.tensor([5.0, -4.0, 3.0, -2.0, 1.0, 0.5])
    mp = [m.model_params.model_validate({"density": 0.5, "gamma": 0.2})]
    params = m.params.model_validate({"model_wide_trim": True, "lambda": 2.0})
    out = m.merge([d], base, mp, params, TensorContext("t", trim_bounds=((1.0, 3.0),)))
    torch.testing.assert_close(out, 2.0 * torch.tensor([0.0, 0.0, 3.0, -2.0, 1.0, 0.0]))


def test_context_bounds_follow_the_inputs_order(tmp_path, llama_family):
    f = llama_family
    plan = _plan(tmp_path, _recipe(f, "ties", [("code", "{density: 0.5}"),
                                               ("math", "{density: 1.0}")]))
    bounds = tuple((float(i), float(i)) for i in range(len(plan.models)))
    pt = plan.tensors[0]
    assert context_bounds(pt, bounds) == tuple(bounds[r.model] for r in pt.inputs)
    assert context_bounds(pt, None) is None
    per_tensor = _plan(tmp_path, _recipe(f, "ties", [("code", "{density: 0.5}")], params=""))
    assert context_bounds(per_tensor.tensors[0], bounds) is None


@pytest.mark.parametrize(("models", "params", "field"), [
    ([("math", "{density: [0.3, 0.7]}"), ("code", "{density: 0.5}")], "model_wide_trim: true",
     "models[0].parameters.density"),
    ([("math", "{density: [{filter: mlp, value: 0.2}, {value: 0.5}]}")], "model_wide_trim: true",
     "models[0].parameters.density"),
    ([("math", "{density: 0.5}")], "model_wide_trim: true, gamma: [0.1, 0.2]",
     "parameters.gamma"),
])
def test_density_varying_by_tensor_is_a_plan_error_naming_the_field(tmp_path, llama_family,
                                                                    models, params, field):
    method = "breadcrumbs" if "gamma" in params else "ties"
    with pytest.raises(PlanError) as err:  # found at plan time: merge plan/validate say it
        _plan(tmp_path, _recipe(llama_family, method, models, params))
    assert len(err.value.problems) == 1
    message = str(err.value.problems[0])
    assert f": {field}: model_wide_trim ranks each model's task vector as a whole" in message
    assert "must be one number per model" in message


def _ties_formula(f: dict[str, Path], models: list[tuple[str, float, float]], per_model: bool,
                  lam: float = 1.0) -> dict[str, torch.Tensor]:
    """TIES written out: trim (per model or per tensor), elect by summed mass, disjoint mean."""
    base = load_tensors(f["base"])
    deltas = [{n: t - base[n] for n, t in load_tensors(f[name]).items()} for name, _, _ in models]
    thresholds = []
    for d, (_, _, density) in zip(deltas, models, strict=True):
        mags = torch.cat([d[n].abs().reshape(-1) for n in sorted(d)])
        thresholds.append(_kth_largest(mags, int(density * mags.numel())))
    out = {}
    for n, b in base.items():
        trimmed = []
        for d, (_, w, density), thr in zip(deltas, models, thresholds, strict=True):
            if not per_model:
                thr = _kth_largest(d[n].abs().reshape(-1), int(density * d[n].numel()))
            trimmed.append((w, w * d[n] * (d[n].abs() >= thr)))
        elected = torch.where(sum(t for _, t in trimmed) >= 0, 1.0, -1.0)
        agree = [(w, t, (torch.sign(t) == elected).float()) for w, t in trimmed]
        divisor = sum(w * k for w, _, k in agree)
        mixed = sum(t * k for _, t, k in agree) / torch.where(divisor == 0, 1.0, divisor)
        out[n] = b + lam * mixed
    return out


MODELS = [("math", 1.0, 0.3), ("code", 0.5, 0.6)]


def _ties_cli_recipe(f: dict[str, Path], params: str) -> str:
    return _recipe(f, "ties", [(name, f"{{weight: {w}, density: {p}}}") for name, w, p in MODELS],
                   params)


def test_cli_model_wide_ties_matches_the_formula(tmp_path, llama_family, run_cli):
    f = llama_family
    recipe = write_recipe(tmp_path, _ties_cli_recipe(f, "model_wide_trim: true, lambda: 0.9"))
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    expected = _ties_formula(f, MODELS, per_model=True, lam=0.9)
    assert set(out) == set(expected)
    for n, t in expected.items():
        torch.testing.assert_close(out[n], t, msg=n)
    per_tensor = _ties_formula(f, MODELS, per_model=False, lam=0.9)
    assert any(not torch.allclose(out[n], per_tensor[n]) for n in out)  # the scope matters


def test_cli_default_trims_per_tensor_unchanged(tmp_path, llama_family, run_cli):
    f = llama_family
    for name, params in (("default", "normalize: true"), ("off", "model_wide_trim: false")):
        res = run_cli(write_recipe(tmp_path, _ties_cli_recipe(f, params), f"{name}.yaml"),
                      tmp_path / name, "--quiet")
        assert res.code == 0, res.err
    default = (tmp_path / "default" / "model.safetensors").read_bytes()
    assert default == (tmp_path / "off" / "model.safetensors").read_bytes()
    out = load_tensors(tmp_path / "default")
    for n, t in _ties_formula(f, MODELS, per_model=False).items():
        torch.testing.assert_close(out[n], t, msg=n)


def test_cli_density_gradient_with_model_scope_exits_2(tmp_path, llama_family, run_cli):
    text = _recipe(llama_family, "ties", [("math", "{weight: 1.0, density: [0.3, 0.7]}")])
    res = run_cli(write_recipe(tmp_path, text), tmp_path / "out", "--quiet")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err
    assert "models[0].parameters.density: model_wide_trim ranks" in lines[0]
    assert not (tmp_path / "out").exists()


def test_resumed_model_wide_merge_is_byte_identical(tmp_path, llama_family, run_cli,
                                                    monkeypatch):
    """A resumed run ranks over every tensor, not only those left to compute."""
    import errno

    from mergekit_like.io.writer import ShardWriter

    recipe = write_recipe(tmp_path, _ties_cli_recipe(llama_family, "model_wide_trim: true"))
    assert run_cli(recipe, tmp_path / "ref", "--quiet").code == 0
    real_write, calls = ShardWriter.write, []

    def full_disk_after_15(self, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) > 15:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(ShardWriter, "write", full_disk_after_15)
    assert run_cli(recipe, tmp_path / "out", "--quiet").code == 2
    monkeypatch.setattr(ShardWriter, "write", real_write)
    resumed = run_cli(recipe, tmp_path / "out", "--quiet", "--resume")
    assert resumed.code == 0, resumed.err
    assert ((tmp_path / "out" / "model.safetensors").read_bytes()
            == (tmp_path / "ref" / "model.safetensors").read_bytes())
