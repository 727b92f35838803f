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


def _tiny_models():  # noqa: ANN202 - (name, model, examples) of three architectures
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    lm = Examples({"input_ids": ids}, None, "perplexity", 2)
    llama = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    gpt2 = GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2, n_positions=8)
    bert = BertConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_labels=3,
        max_position_embeddings=8,
    )
    labelled = Examples(
        {"input_ids": ids, "attention_mask": mask}, torch.tensor([0, 2, 1]), "classification", 2
    )
    return [
        ("llama, tied embeddings", LlamaForCausalLM(llama).eval(), lm),
        ("gpt2, Conv1D", GPT2LMHeadModel(gpt2).eval(), lm),
        ("bert classifier", BertForSequenceClassification(bert).eval(), labelled),
    ]


def _layer_of(name: str) -> int | None:
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def test_fisher_a_layer_group_at_a_time_is_the_one_pass_bytes(monkeypatch) -> None:
    """One pass per group of whole layers (only that group asking for gradients) gives the
    bytes of one pass for every parameter, with data labels and with sampled ones."""
    from mergekit_like.datamerge import statistics

    monkeypatch.setattr(statistics, "STATS_SHARE", 10**15)  # one layer per group
    for what, model, examples in _tiny_models():
        names = {p.data_ptr(): n for n, p in model.named_parameters()}
        layers = {n: _layer_of(n) for n in names.values()}
        for seed in (None, 5):
            whole = statistics.fisher_diagonal(model, examples, names, seed)
            parts = list(statistics.fisher_groups(model, examples, names, layers, seed))
            assert len(parts) == 4, what  # three layers, then the rest
            assert [sorted({layers[n] for n in part}, key=str) for part in parts] == [
                [0],
                [1],
                [2],
                [None],
            ], what
            joined = {n: t for part in parts for n, t in part.items()}
            assert sum(len(part) for part in parts) == len(joined) == len(whole), what
            for n, t in whole.items():
                assert torch.equal(joined[n], t), (what, seed, n)
        assert all(p.requires_grad for p in model.parameters()), what  # flags restored


def test_fisher_groups_stay_within_the_budget() -> None:
    from mergekit_like.datamerge.statistics import STATS_SHARE, fisher_groups

    _, model, examples = _tiny_models()[0]
    names = {p.data_ptr(): n for n, p in model.named_parameters()}
    layers = {n: _layer_of(n) for n in names.values()}
    budget = sum(4 * p.numel() for p in model.parameters()) // STATS_SHARE
    parts = list(fisher_groups(model, examples, names, layers))
    assert len(parts) > 1
    for part in parts:
        in_layers = {layers[n] for n in part}
        size = sum(4 * t.numel() for t in part.values())
        assert size <= budget or len(in_layers) == 1, (sorted(in_layers, key=str), size)


def test_hold_disk_writes_the_statistics_and_model_of_hold_memory(
    vit_setup, run_merge, monkeypatch, tmp_path
) -> None:
    """datamerge.hold: disk (a pass per layer group) writes the same statistics files under
    the same keys and the same model bytes as hold: memory, so either reuses the other's."""
    from safetensors.torch import load_file

    from mergekit_like.datamerge import statistics

    monkeypatch.setattr(statistics, "STATS_SHARE", 10**15)
    folders, data = vit_setup
    runs = {}
    for hold in ("memory", "disk"):
        cache = tmp_path / f"cache-{hold}"
        monkeypatch.setenv("MERGEKIT_LIKE_CACHE", str(cache))
        text = recipe_text("fisher", folders, data, f"hold: {hold}\nsample_labels: true")
        out = run_merge(text)
        report = json.loads((out / "datamerge_report.json").read_text())
        keys = [s["key"] for s in report["statistics"]]
        assert [s["cache"] for s in report["statistics"]] == ["miss"] * 3
        files = [load_file(cache / "stats" / f"{k}.safetensors") for k in keys]
        runs[hold] = (keys, files, (out / "model.safetensors").read_bytes())
    (keys, files, model), (keys2, files2, model2) = runs["memory"], runs["disk"]
    assert keys == keys2 and model == model2
    for a, b in zip(files, files2, strict=True):
        assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    out = run_merge(recipe_text("fisher", folders, data, "hold: memory\nsample_labels: true"))
    report = json.loads((out / "datamerge_report.json").read_text())
    assert [s["cache"] for s in report["statistics"]] == ["hit"] * 3  # disk's files reused
