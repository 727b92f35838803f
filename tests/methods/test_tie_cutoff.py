"""Equal magnitudes at the cut-off are kept as mergekit's sorts keep them.

mergekit 0.1.5 ranks with ``torch.argsort``: TIES keeps the first ``k`` of a descending sort,
Model Breadcrumbs the slice ``[n_bot, n_bot + k)`` of an ascending sort, both unstable; on a
CPU torch's unstable sort is libstdc++'s introsort (for 16 entries or fewer an insertion
sort: stable). The expected masks are written out below for small tensors, or taken from
``torch.argsort`` itself on a CPU for large ones; every way of merging (whole, in row
chunks that cut runs of equal magnitudes, eager, C kernels) must give them. SCE keeps the
top variances as mergekit's ``torch.topk`` keeps them on a CPU.
"""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.rank_select import RankWindow, rank_window_mask
from mergekit_like.methods.sparsify import Trim, TrimState, magnitude_mask, outlier_mask
from tests.methods.test_kernels import COMPILED, EAGER, merge

KERNELS = [EAGER, COMPILED]


def mergekit_top(mags: torch.Tensor, k: int, stable: bool = False) -> torch.Tensor:
    """mergekit's magnitude mask: the first k of torch's descending sort on a CPU."""
    keep = torch.zeros(mags.numel(), dtype=torch.bool)
    keep[torch.argsort(mags.reshape(-1).float(), descending=True, stable=stable)[:k]] = True
    return keep.view_as(mags)


def mergekit_slice(mags: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """mergekit's breadcrumbs mask: ranks [lo, hi) of torch's ascending sort on a CPU."""
    keep = torch.zeros(mags.numel(), dtype=torch.bool)
    keep[torch.sort(mags.reshape(-1).float()).indices[lo:hi]] = True
    return keep.view_as(mags)


def tied_deltas(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A bfloat16 fine-tune's task vector: few distinct magnitudes, long runs of each."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=gen).mul(0.5).bfloat16()
    x = (base.float() + 0.004 * torch.randn(rows, cols, generator=gen)).bfloat16()
    return x.float() - base.float()


def test_ties_keep_the_earlier_of_equal_magnitudes_at_the_kth_place():
    delta = torch.tensor([1.0, -3.0, 2.0, 3.0, -2.0, 2.0, 0.5, 2.0])
    # k = int(0.5 * 8) = 4: both 3s, then the first two of the four 2s (positions 2 and 4)
    want = [False, True, True, True, True, False, False, False]
    assert magnitude_mask(delta, 0.5).tolist() == want


def test_ties_keep_one_entry_when_density_rounds_to_none():
    """mergekit keeps ``max(1, int(density * n))`` entries for any positive density."""
    delta = torch.tensor([0.5, -2.0, 1.0, 2.0])
    assert magnitude_mask(delta, 0.1).tolist() == [False, True, False, False]
    window = TrimState(Trim("magnitude", 0.1), 4, 32).window
    assert window is not None and (window.lo, window.hi) == (3, 4)


def test_breadcrumbs_rank_equal_magnitudes_by_position_at_both_edges():
    delta = torch.tensor([1.0, 1.0, -1.0, 2.0, 2.0, 2.0, 5.0, 1.0, -2.0, 4.0])
    # n = 10, density 0.5 keeps 5, gamma 0.2 drops the 2 largest (5, 4), so n_bot = 3:
    # ascending ranks 3..7 by (|delta|, position): the last 1 (position 7), then the 2s at
    # 3, 4, 5, 8: all four (ranks 4..7)
    want = [False, False, False, True, True, True, False, True, True, False]
    assert outlier_mask(delta, 0.5, 0.2).tolist() == want
    # gamma 0.1 drops only the 5: n_bot = 4 falls among the 1s (positions 0, 1, 3, 4, 5 at
    # ranks 0-4): the last of them (position 5) is kept, then the 2s and the 4
    delta2 = torch.tensor([1.0, 1.0, 2.0, -1.0, 1.0, 1.0, 2.0, 2.0, 5.0, 4.0])
    want2 = [False, False, True, False, False, True, True, True, False, True]
    assert outlier_mask(delta2, 0.5, 0.1).tolist() == want2
    delta3 = torch.tensor([2.0, 1.0, 2.0, 2.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0])
    # density 0.3, gamma 0.3: ranks [4, 7) ascending: the first three 2s (positions 0, 2, 3)
    want3 = [True, False, True, True, False, False, False, False, False, False]
    assert outlier_mask(delta3, 0.3, 0.3).tolist() == want3


def test_a_top_window_keeps_the_earlier_ties_in_chunks_cutting_the_run():
    mags = torch.full((10,), 2.0)
    window = RankWindow(10, 7, 10, 32, ties="descending")
    parts = list(mags.split(3))
    for round_ in range(window.rounds):
        for part in parts:
            window.observe(round_, part)
        window.finish(round_)
    assert torch.cat([window.mask(p) for p in parts]).bool().tolist() == [True] * 3 + [False] * 7
    assert rank_window_mask(mags, 7, 10, ties="descending").tolist() == [True] * 3 + [False] * 7


@pytest.mark.parametrize("n", [5000, 70_001])  # > 2^16: a large tensor, several chunks
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bracket", [False, True])
def test_trims_in_chunks_match_torch_argsort_on_tied_magnitudes(n, dtype, bracket):
    delta = tied_deltas(1, n, seed=n).reshape(-1).to(dtype)
    mags = delta.abs()
    for trim in (
        Trim("magnitude", 0.37),
        Trim("magnitude", 0.9),
        Trim("outliers", 0.6, 0.07),
        Trim("outliers", 0.95, 0.01),
    ):
        keep = max(1, int(trim.density * n))
        if trim.kind == "magnitude":
            want = mergekit_top(mags, keep)
        else:
            n_top = int(trim.gamma * n)
            lo = max(0, n - keep - n_top)
            want = mergekit_slice(mags, lo, lo + keep)
        for size in (n, 977, 4096):
            state = TrimState(
                trim, n, torch.finfo(dtype).bits, bracket=bracket and dtype == torch.float32
            )
            parts = list(delta.split(size))
            for round_ in range(state.rounds):
                if state.wants(round_):
                    at = 0
                    for part in parts:
                        state.observe(round_, part, at)
                        at += part.numel()
                    state.finish(round_)
            got = torch.cat([state.apply(p.clone(), 0) for p in parts])
            assert torch.equal(got != 0, want & (delta != 0)), (trim, size)


def single_model(method, delta, params, kernels, chunk_rows):
    base = torch.zeros_like(delta)
    return merge(method, kernels, [delta.clone()], base, [params], {}, chunk_rows)


@pytest.mark.parametrize("kernels", KERNELS, ids=["eager", "compiled"])
@pytest.mark.parametrize("chunk_rows", [None, 1, 3])
def test_ties_merge_keeps_mergekits_ties_whole_in_chunks_and_in_c(kernels, chunk_rows):
    delta = tied_deltas(12, 300, seed=1)
    for density in (0.2, 0.55):
        want = delta * mergekit_top(delta.abs(), int(density * delta.numel()))
        got = single_model("ties", delta, {"weight": 1.0, "density": density}, kernels, chunk_rows)
        assert torch.equal(got, want)


@pytest.mark.parametrize("kernels", KERNELS, ids=["eager", "compiled"])
@pytest.mark.parametrize("chunk_rows", [None, 1, 3])
@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_merges_rank_ties_as_torch_sort_on_a_cpu(kernels, chunk_rows, method):
    delta = tied_deltas(12, 300, seed=2)
    n = delta.numel()
    density, gamma = 0.5, 0.05
    keep, n_top = int(density * n), int(gamma * n)
    lo = n - keep - n_top
    want = delta * mergekit_slice(delta.abs(), lo, lo + keep)
    got = single_model(
        method, delta, {"weight": 1.0, "density": density, "gamma": gamma}, kernels, chunk_rows
    )
    assert torch.equal(got, want)


@pytest.mark.parametrize("chunk_rows", [None, 2])
def test_sce_selects_the_equal_variances_cpu_topk_selects(chunk_rows):
    # two models, base 0: variance ((a - b) / 2) ** 2; equal variances in long runs
    a = tied_deltas(8, 64, seed=3)
    b = torch.zeros_like(a)
    var = torch.var(torch.stack([a, b]), dim=0, unbiased=False)
    k = int(0.3 * int(torch.count_nonzero(var)))
    keep = torch.zeros(var.numel(), dtype=torch.bool)
    keep[torch.topk(var.abs().view(-1), k, largest=True).indices] = True  # mergekit's call
    keep = keep.view_as(var)
    assert not torch.equal(keep, mergekit_top(var, k, stable=True))  # not the earlier ones
    # the merge: select, weight by energy (equal for a and 0? a's energy only: weight 1 and 0)
    got = merge(
        "sce",
        EAGER,
        [a.clone(), b.clone()],
        torch.zeros_like(a),
        [{}, {}],
        {"select_topk": 0.3},
        chunk_rows,
    )
    assert torch.equal(got != 0, keep & (a != 0))


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory):
    """A tiny Llama base and fine-tune stored in bfloat16: task vectors full of ties."""
    from safetensors.torch import load_file, save_file

    from mergekit_like.demo import make_family

    family = make_family(tmp_path_factory.mktemp("bf16"), "llama", names=("ft",), noise=0.004)
    for folder in family.values():
        for f in folder.glob("*.safetensors"):
            tensors = {k: v.bfloat16().contiguous() for k, v in load_file(f).items()}
            save_file(tensors, f, metadata={"format": "pt"})
    return family


@pytest.mark.parametrize(
    "options",
    [
        ["--kernels", "eager"],
        ["--kernels", "eager", "--chunk-size", "1KiB"],
        ["--kernels", "compiled", "--chunk-size", "1KiB"],
    ],
)
@pytest.mark.parametrize("method", ["ties", "breadcrumbs"])
def test_merges_of_bfloat16_models_keep_mergekits_entries(
    tmp_path, run_cli, bf16_pair, options, method
):
    from tests.conftest import load_tensors, write_recipe

    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: {method}
base_model: {bf16_pair["base"]}
models:
  - model: {bf16_pair["ft"]}
    parameters: {{weight: 1.0, density: 0.4, gamma: 0.05}}
dtype: float32
""".replace(", gamma: 0.05", ", gamma: 0.05" if method == "breadcrumbs" else ""),
    )
    assert run_cli(recipe, tmp_path / "out", *options).code == 0
    base, ft = load_tensors(bf16_pair["base"]), load_tensors(bf16_pair["ft"])
    out = load_tensors(tmp_path / "out")
    for name, b in base.items():
        delta = ft[name].float() - b.float()
        n = delta.numel()
        if method == "ties":
            keep = mergekit_top(delta.abs(), max(1, int(0.4 * n)))
        else:
            k, n_top = int(0.4 * n), int(0.05 * n)
            keep = mergekit_slice(delta.abs(), n - k - n_top, n - n_top)
        assert torch.equal(out[name], b.float() + delta * keep), name
