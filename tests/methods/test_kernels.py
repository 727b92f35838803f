"""The family's passes compiled by torch.compile give the eager bytes, whole and in chunks."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.methods.kernels import COMPILE_MIN_ENTRIES, Kernels, choose_mode
from mergekit_like.methods.rank_select import RankWindow

EAGER, COMPILED = Kernels("eager"), Kernels("compiled")
INDUCTOR = Kernels("compiled", native_kernels=False)  # no C kernels: all by torch.compile


def family_inputs(rows: int, cols: int, dtype: torch.dtype, seed: int = 0):
    """Task vectors as fine-tunes make them: bfloat16-rounded, so many magnitudes are equal;
    some entries equal to the base (zero deltas) and a base holding -0.0."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=gen).bfloat16().to(dtype)
    base[0, :3] = -0.0
    xs = []
    for k in range(3):
        x = (base + 0.02 * torch.randn(rows, cols, generator=gen)).bfloat16().to(dtype)
        x[k, :] = base[k, :]
        xs.append(x)
    return xs, base


def merge(method, kernels, xs, base, model_params, params, chunk_rows=None):
    """Merge whole, or in row chunks after the method's statistics passes (as the executor)."""
    m = REGISTRY[method]
    mps = [m.model_params.model_validate(p) for p in model_params]
    g = m.params.model_validate(params)
    if chunk_rows is None:
        return m.merge([x.clone() for x in xs], base.clone(), mps, g,
                       TensorContext("t", 3, kernels=kernels))
    cols = base.shape[1]
    chunks = [(r, min(base.shape[0], r + chunk_rows))
              for r in range(0, base.shape[0], chunk_rows)]
    stats = m.stats(tuple(base.shape), torch.finfo(base.dtype).bits, mps, g,
                    TensorContext("t", 3, kernels=kernels))
    for round_ in range(stats.rounds if stats is not None else 0):
        if stats.wants(round_):
            for a, b in chunks:
                stats.observe(round_, [x[a:b].clone() for x in xs], base[a:b].clone(), a * cols)
            stats.finish(round_)
    out = [m.merge([x[a:b].clone() for x in xs], base[a:b].clone(), mps, g,
                   TensorContext("t", 3, stats=stats, start=a * cols, kernels=kernels))
           for a, b in chunks]
    return torch.cat(out)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}.get(a.dtype, torch.int16)
    return a.dtype == b.dtype and torch.equal(a.view(bits), b.view(bits))


CASES = [
    ("ties", [{"weight": 1.0, "density": 0.5}] * 3, {}),
    ("ties", [{"weight": 0.7, "density": 0.3}, {"weight": -0.2, "density": 0.5},
              {"weight": 1.3, "density": 0.9}], {"normalize": True, "lambda": 0.8}),
    ("ties", [{"weight": 1.0, "density": 0.4}] * 3, {"rescale": True}),
    ("dare_ties", [{"weight": 1.0, "density": 0.5}] * 3, {}),
    ("dare_linear", [{"weight": 0.6, "density": 0.3}] * 3,
     {"rescale": True, "rescale_by_probability": True}),
    ("breadcrumbs", [{"weight": 1.0, "density": 0.8, "gamma": 0.05}] * 3, {}),
    ("breadcrumbs_ties", [{"weight": 0.5, "density": 0.9, "gamma": 0.01}] * 3,
     {"normalize": True}),
    ("task_arithmetic", [{"weight": 0.5}, {"weight": -1.0}, {"weight": 0.0}], {"lambda": 1.5}),
    ("della", [{"weight": 1.0, "density": 0.5, "epsilon": 0.1}] * 3, {}),
]


@pytest.mark.parametrize(("method", "model_params", "params", "dtype"),
                         [(*c, torch.float32) for c in CASES] + [
                             (*CASES[i], dtype) for i in (1, 4, 5)
                             for dtype in (torch.float64, torch.bfloat16, torch.float16)],
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)] + [
                             f"{CASES[i][0]}-{i}-{str(dtype)[6:]}" for i in (1, 4, 5)
                             for dtype in (torch.float64, torch.bfloat16, torch.float16)])
def test_compiled_passes_give_the_eager_bytes(method, model_params, params, dtype):
    xs, base = family_inputs(24, 40, dtype)
    want = merge(method, EAGER, xs, base, model_params, params)
    assert same_bytes(merge(method, EAGER, xs, base, model_params, params, chunk_rows=5), want)
    for kernels in (COMPILED, INDUCTOR) if dtype == torch.float32 else (INDUCTOR,):
        assert same_bytes(merge(method, kernels, xs, base, model_params, params), want)
        assert same_bytes(merge(method, kernels, xs, base, model_params, params, chunk_rows=5),
                          want)


def test_every_float_width_is_compiled_but_float8():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        assert COMPILED.fused(dtype) and not EAGER.fused(dtype)
    assert not COMPILED.fused(torch.float8_e4m3fn) and not COMPILED.fused(torch.int32)


def test_auto_compiles_only_large_cpu_merges_with_a_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "g++")
    assert choose_mode("auto", "cpu", COMPILE_MIN_ENTRIES) == "compiled"
    assert choose_mode("auto", "cpu", COMPILE_MIN_ENTRIES - 1) == "eager"
    assert choose_mode("auto", "cuda:0", 10 * COMPILE_MIN_ENTRIES) == "eager"
    assert choose_mode("eager", "cpu", 10 * COMPILE_MIN_ENTRIES) == "eager"
    assert choose_mode("compiled", "cpu", 1) == "compiled"
    with pytest.raises(ValueError, match="CPU only"):
        choose_mode("compiled", "cuda:0", 1)
    monkeypatch.delenv("CXX")
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert choose_mode("auto", "cpu", COMPILE_MIN_ENTRIES) == "eager"


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch, capsys):
    from torch._dynamo.exc import InternalTorchDynamoError

    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            calls.append(fn.__name__)
            raise InternalTorchDynamoError("no compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    kernels = Kernels("compiled", native_kernels=False)
    xs, base = family_inputs(6, 8, torch.float32)
    mp = [{"weight": 1.0, "density": 0.5}] * 3
    for _ in range(2):
        assert same_bytes(merge("ties", kernels, xs, base, mp, {}),
                          merge("ties", EAGER, xs, base, mp, {}))
    err = capsys.readouterr().err
    assert err.count("compiling the merge kernels failed") == len(set(calls)) >= 1
    assert len(calls) == len(set(calls))  # each kernel tried once, then eager


def test_a_right_guess_settles_the_second_round():
    gen = torch.Generator().manual_seed(1)
    values = torch.rand(1000, generator=gen)
    mags = torch.cat([values[torch.randperm(1000, generator=gen)] for _ in range(4)])
    window = RankWindow(4000, 1000, 4000, 32)
    assert window.rounds == 2 and window.wants(1)
    for part in mags.split(1000):  # chunks alike: the first one's guess holds
        window.observe(0, part)
    window.finish(0)
    assert not window.wants(1)
    kept = torch.cat([window.mask(p) for p in mags.split(1000)]).bool()
    order = torch.sort(mags, stable=True).indices  # ranks by (magnitude, position)
    assert torch.equal(kept, torch.zeros(4000, dtype=torch.bool).index_fill_(0, order[1000:], True))


def test_a_wrong_guess_takes_the_second_round():
    mags = torch.cat([torch.full((1000,), 0.001), torch.linspace(1.0, 2.0, 3000)])
    window = RankWindow(4000, 2000, 4000, 32)
    for part in mags.split(1000):  # the first chunk alone would put the boundary at 0.001
        window.observe(0, part)
    window.finish(0)
    assert window.wants(1)
    for part in mags.split(1000):
        window.observe(1, part)
    window.finish(1)
    assert not window.wants(2)
    kept = torch.cat([window.mask(p) for p in mags.split(1000)]).bool()
    assert torch.equal(kept, torch.arange(4000) >= 2000)


def test_counter_draws_are_uniform_and_independent_across_lags_and_models():
    from mergekit_like.methods.draws import Draws

    n = 1 << 20
    u = Draws(0, "model.layers.0.mlp.up_proj.weight", 0, n).take(0, n, "cpu")
    v = Draws(0, "model.layers.0.mlp.up_proj.weight", 1, n).take(0, n, "cpu")
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    torch.testing.assert_close(float(u.mean()), 0.5, atol=2e-3, rtol=0)
    torch.testing.assert_close(float(u.var()), 1 / 12, atol=1e-3, rtol=0)

    def chi2(a: torch.Tensor, b: torch.Tensor) -> float:  # 16 x 16 cells: 255 dof
        cells = torch.bincount((a * 16).long() * 16 + (b * 16).long(), minlength=256).double()
        return float(((cells - cells.mean()) ** 2 / cells.mean()).sum())

    for lag in (1, 2, 3, 64, 4096):  # 0.1% of chi2(255) lies above 330
        assert chi2(u[:-lag], u[lag:]) < 330
    assert chi2(u, v) < 330
    assert abs(float((u < 0.3).float().mean()) - 0.3) < 3e-3


@pytest.mark.parametrize("case", [0, 2, 5])  # ties, ties with the L1 rescale, breadcrumbs
def test_bracket_settled_merges_count_no_chunk_again(monkeypatch, case):
    """Where the bracket rounds pin every boundary value, the merge pass (and the L1 round)
    take each chunk's count of equal entries from the ledgers, and search a chunk for them
    only where a window's edge falls among entries equal to a bracket's low end."""
    from mergekit_like.methods.kernels import PairChunk

    if COMPILED.native() is None:
        pytest.skip("no C kernels here")
    method, model_params, params = CASES[case]
    xs, base = family_inputs(240, 400, torch.float32, seed=4)
    want = merge(method, EAGER, xs, base, model_params, params)
    searched = []
    search = PairChunk.equal_places

    def refused(*args, **kwargs):
        raise AssertionError("counted again")

    def searching(self, value, ks):
        searched.append(value)
        return search(self, value, ks)

    monkeypatch.setattr(Kernels, "count_equal", refused)
    monkeypatch.setattr(PairChunk, "equal_places", searching)
    for rows in (240, 50):
        searched.clear()
        assert same_bytes(merge(method, COMPILED, xs, base, model_params, params, rows), want)
        # one chunk per model and window edge at most (twice with the L1 round)
        edges = 2 if method == "breadcrumbs" else 1
        assert len(searched) <= len(xs) * edges * (2 if params.get("rescale") else 1)
