"""Fisher merging against squared gradients computed here, example by example."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.testing import assert_close

from mergekit_like.datamerge.solve import fisher_merge
from mergekit_like.datamerge.statistics import Examples, fisher_diagonal
from mergekit_like.soups.ingredients import checkpoint_names
from tests.datamerge.conftest import load_vit, read_output, recipe_text, val_examples


def fisher_here(folder: Path, data: Path, seed: int | None = None) -> dict[str, torch.Tensor]:
    """mean_n (d/dtheta log p(y_n | x_n))^2 per checkpoint tensor, one autograd call per
    example; y_n from the data, or sampled from the model with a generator seeded ``seed``."""
    model = load_vit(folder)
    own_to_ckpt = {own: ckpt for ckpt, own in checkpoint_names(model).items()}
    named = [(own_to_ckpt[n], p) for n, p in model.named_parameters()]
    x, y = val_examples(data)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    sums = {n: torch.zeros_like(p) for n, p in named}
    for i in range(len(x)):
        logp = torch.log_softmax(model(pixel_values=x[i : i + 1]).logits, -1)[0]
        label = (
            int(y[i])
            if gen is None
            else int(torch.multinomial(logp.detach().exp()[None], 1, generator=gen))
        )
        grads = torch.autograd.grad(logp[label], [p for _, p in named])
        for (n, _), g in zip(named, grads, strict=True):
            sums[n] += g.square()
    return {n: s / len(x) for n, s in sums.items()}


def expected(
    folders: list[Path], data: Path, scales: list[float], eps: float, seed: int | None = None
) -> dict[str, torch.Tensor]:
    """sum_k s_k max(F_k, eps) theta_k / sum_k s_k max(F_k, eps), written out."""
    from safetensors.torch import load_file

    fishers = [fisher_here(f, data, seed) for f in folders]
    states = [load_file(f / "model.safetensors") for f in folders]
    out = {}
    for name in states[0]:
        w = [s * f[name].clamp_min(eps) for s, f in zip(scales, fishers, strict=True)]
        out[name] = sum(wk * st[name] for wk, st in zip(w, states, strict=True)) / sum(w)
    return out


def test_fisher_merge_matches_gradients_computed_here(vit_setup, run_merge) -> None:
    folders, data = vit_setup
    scales = [1.0, 2.0, 0.5]
    out = run_merge(recipe_text("fisher", folders, data, "epsilon: 1e-10", weights=scales))
    want = expected(folders, data, scales, 1e-10)
    got = read_output(out)
    assert set(got) == set(want)
    for name in want:
        assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    report = json.loads((out / "datamerge_report.json").read_text())
    assert report["plain_mean_tensors"] == []
    assert report["statistics_examples"] == 6
    assert {"val", "test"} <= set(report["scores"])
    assert report["scores"]["val"]["loss"] is not None
    assert "[`fisher`](https://arxiv.org/abs/2111.09832)" in (out / "README.md").read_text()


def test_fisher_with_sampled_labels(vit_setup, run_merge) -> None:
    folders, data = vit_setup
    out = run_merge(
        recipe_text("fisher", folders[:2], data, "sample_labels: true\nseed: 3\nepsilon: 1e-10")
    )
    want = expected(folders[:2], data, [1.0, 1.0], 1e-10, seed=3)
    got = read_output(out)
    for name in want:
        assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_large_epsilon_floors_every_entry_to_the_weighted_mean(vit_setup, run_merge) -> None:
    from safetensors.torch import load_file

    folders, data = vit_setup
    out = run_merge(recipe_text("fisher", folders[:2], data, "epsilon: 1000.0", weights=[3.0, 1.0]))
    a, b = (load_file(f / "model.safetensors") for f in folders[:2])
    for name, got in read_output(out).items():
        assert_close(got, (3 * a[name] + b[name]) / 4, msg=name)


def test_parameters_without_gradient_are_left_out_and_merged_as_the_mean() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.unused = torch.nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor):  # noqa: ANN201
            return type("Out", (), {"logits": self.net(x)})()

    wrap = Wrap()
    names = {p.data_ptr(): n for n, p in wrap.named_parameters()}
    x = torch.randn(5, 3)
    y = torch.tensor([0, 1, 1, 0, 1])
    got = fisher_diagonal(wrap, Examples({"x": x}, y, "classification", 2), names)
    assert set(got) == {"net.0.weight", "net.1.weight", "net.1.bias"}
    w = wrap.net[1].weight
    grads = [
        torch.autograd.grad(torch.log_softmax(wrap.net(x[i : i + 1]), -1)[0, y[i]], w)[0]
        for i in range(5)
    ]
    assert_close(got["net.1.weight"], sum(g.square() for g in grads) / 5)
    a, b = torch.randn(4), torch.randn(4)
    assert_close(fisher_merge([a, b], [None, torch.ones(4)], [1.0, 3.0], 1e-6), (a + 3 * b) / 4)


def test_causal_lm_fisher_sums_the_token_log_likelihoods() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 40, (3, 7))
    names = {p.data_ptr(): n for n, p in model.named_parameters()}
    got = fisher_diagonal(model, Examples({"input_ids": ids}, None, "perplexity", 2), names)
    p = model.model.layers[1].mlp.down_proj.weight
    total = torch.zeros_like(p)
    for i in range(3):
        logp = torch.log_softmax(model(input_ids=ids[i : i + 1]).logits[0, :-1], -1)
        ll = logp.gather(-1, ids[i, 1:, None]).sum()
        total += torch.autograd.grad(ll, p)[0].square()
    assert_close(got["model.layers.1.mlp.down_proj.weight"], total / 3)
