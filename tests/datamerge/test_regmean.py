"""RegMean against least-squares solves on activations recorded here."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from mergekit_like.datamerge.solve import regmean_merge
from mergekit_like.datamerge.statistics import Examples, gram_matrices, linear_modules
from tests.datamerge.conftest import load_vit, read_output, recipe_text, val_examples

DENSE = "vit.encoder.layer.0.intermediate.dense"
#: checkpoint prefix -> the live module (transformers 5 renames ViT's modules on load)
MODULES = {
    DENSE: "vit.layers.0.mlp.fc1",
    "vit.encoder.layer.0.output.dense": "vit.layers.0.mlp.fc2",
    "classifier": "classifier",
}


def record_inputs(model: torch.nn.Module, ckpt: str, x: torch.Tensor) -> torch.Tensor:
    """The rows (tokens) that reach the linear layer of checkpoint prefix ``ckpt`` when
    ``model`` runs on ``x``."""
    seen = []
    module = dict(model.named_modules())[MODULES[ckpt]]
    hook = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(pixel_values=x)
    hook.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()


def least_squares(inputs: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    """argmin_W sum_k ||X_k W^T - X_k W_k^T||^2 (numpy's lstsq on the stacked rows), as
    [out, in]."""
    a = np.concatenate([x.numpy() for x in inputs])
    b = np.concatenate([(x @ w.double().T).numpy() for x, w in zip(inputs, weights, strict=True)])
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    return torch.from_numpy(sol.T).float()


def test_regmean_alpha_1_is_the_least_squares_merge(vit_setup, run_merge) -> None:
    folders, data = vit_setup
    out = run_merge(recipe_text("regmean", folders, data, "alpha: 1.0"))
    got = read_output(out)
    x, _ = val_examples(data)
    states = [load_file(f / "model.safetensors") for f in folders]
    for module in (DENSE, "vit.encoder.layer.0.output.dense", "classifier"):
        inputs = [record_inputs(load_vit(f), module, x) for f in folders]
        want = least_squares(inputs, [s[f"{module}.weight"] for s in states])
        assert_close(got[f"{module}.weight"], want, rtol=1e-4, atol=1e-5, msg=module)
    for name in (
        "vit.encoder.layer.0.layernorm_before.weight",
        f"{DENSE}.bias",
        "vit.embeddings.cls_token",
    ):  # not a linear layer's weight: the mean
        assert_close(got[name], sum(s[name] for s in states) / 3, msg=name)
    report = json.loads((out / "datamerge_report.json").read_text())
    assert report["linear_layers"] == 7  # q, k, v, attention output, intermediate, output, head
    card = (out / "README.md").read_text()
    assert "[`regmean`](https://arxiv.org/abs/2212.09849)" in card
    assert "2508.03121" not in card  # RegMean++ only when plusplus is set


def test_regmean_alpha_scales_the_off_diagonals(vit_setup, run_merge) -> None:
    folders, data = vit_setup
    out = run_merge(recipe_text("regmean", folders[:2], data, "alpha: 0.5"))
    x, _ = val_examples(data)
    grams, ws = [], []
    for f in folders[:2]:
        xs = record_inputs(load_vit(f), DENSE, x).numpy()
        g = xs.T @ xs / len(xs)
        grams.append(0.5 * g + 0.5 * np.diag(np.diag(g)))
        ws.append(load_file(f / "model.safetensors")[f"{DENSE}.weight"].double().numpy())
    want = np.linalg.solve(sum(grams), sum(g @ w.T for g, w in zip(grams, ws, strict=True))).T
    assert_close(
        read_output(out)[f"{DENSE}.weight"], torch.from_numpy(want).float(), rtol=1e-4, atol=1e-5
    )


def test_regmean_plusplus_takes_inputs_through_the_merged_earlier_layers(
    vit_setup, run_merge
) -> None:
    folders, data = vit_setup
    out = run_merge(recipe_text("regmean", folders, data, "alpha: 1.0\nplusplus: true"))
    states = [load_file(f / "model.safetensors") for f in folders]
    x, _ = val_examples(data)
    inputs = []
    for f in folders:  # ingredient k's layer 0 behind the merged (mean) embeddings
        model = load_vit(f)
        with torch.no_grad():
            for name, p in model.vit.embeddings.named_parameters():
                key = f"vit.embeddings.{name}"
                p.copy_(sum(s[key] for s in states) / 3)
        inputs.append(record_inputs(model, DENSE, x))
    want = least_squares(inputs, [s[f"{DENSE}.weight"] for s in states])
    assert_close(read_output(out)[f"{DENSE}.weight"], want, rtol=1e-4, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "[`regmean`](https://arxiv.org/abs/2508.03121)" in card  # RegMean++ first
    assert "https://arxiv.org/abs/2212.09849" in card
    plain = read_output(run_merge(recipe_text("regmean", folders, data, "alpha: 1.0")))
    assert not torch.allclose(plain[f"{DENSE}.weight"], want, rtol=1e-4, atol=1e-5)


def test_weight_layouts_linear_and_conv1d_give_the_same_solve() -> None:
    torch.manual_seed(0)
    ws = [torch.randn(5, 3) for _ in range(2)]  # nn.Linear: [out, in]
    xs = [torch.randn(9, 3) for _ in range(2)]
    grams = [x.T @ x for x in xs]
    linear = regmean_merge(ws, grams, 1.0, transposed=False)
    conv1d = regmean_merge([w.T for w in ws], grams, 1.0, transposed=True)  # [in, out]
    assert_close(conv1d, linear.T)
    assert_close(linear, least_squares([x.double() for x in xs], ws), rtol=1e-4, atol=1e-5)


def test_an_input_feature_never_set_keeps_the_mean_weight() -> None:
    x = torch.randn(6, 3)
    x[:, 1] = 0
    ws = [torch.randn(2, 3), torch.randn(2, 3)]
    merged = regmean_merge(ws, [x.T @ x, x.T @ x], 1.0, transposed=False)
    assert_close(merged[:, 1], (ws[0][:, 1] + ws[1][:, 1]) / 2)


def test_gram_rows_exclude_padding_by_attention_mask() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    model = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 30, (3, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    names = {p.data_ptr(): n for n, p in model.named_parameters()}
    modules = linear_modules(model, names)
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    got = gram_matrices(
        model,
        Examples({"input_ids": ids, "attention_mask": mask}, None, "classification", 2),
        modules,
    )
    seen = []
    hook = model.bert.encoder.layer[1].intermediate.dense.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach())
    )
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    hook.remove()
    rows = seen[0][mask.bool()]
    assert_close(got[name], rows.T @ rows / rows.shape[0], rtol=1e-5, atol=1e-6)
    assert "bert.embeddings.word_embeddings.weight" not in modules


def test_layers_fed_one_input_share_one_gram_matrix() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 40, (5, 7))
    names = {p.data_ptr(): n for n, p in model.named_parameters()}
    modules = linear_modules(model, names)
    got = gram_matrices(model, Examples({"input_ids": ids}, None, "perplexity", 2), modules)
    assert set(got) == set(modules)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in modules}  # each one's own inputs
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: seen[n].append(a[0].detach()))
             for n, (m, _) in modules.items()]
    with torch.no_grad():
        for start in range(0, 5, 2):
            model(input_ids=ids[start:start + 2])
    for h in hooks:
        h.remove()
    for name, xs in seen.items():  # the same bytes as each layer's own sum
        rows = [x.reshape(-1, x.shape[-1]) for x in xs]
        want = rows[0].T @ rows[0]
        for r in rows[1:]:
            want.add_(r.T @ r)
        assert torch.equal(got[name], want.div_(sum(r.shape[0] for r in rows))), name
    layer = "model.layers.0"
    q, k, v = (got[f"{layer}.self_attn.{p}_proj.weight"] for p in "qkv")
    gate, up = (got[f"{layer}.mlp.{p}_proj.weight"] for p in ("gate", "up"))
    assert q is k is v and gate is up  # one matrix each, not three and two
    assert got[f"{layer}.self_attn.o_proj.weight"] is not q
    distinct = {id(g) for g in got.values()}
    assert len(distinct) == 2 * 4 + 1  # per layer: qkv, o, gate/up, down; and lm_head


def test_a_layer_whose_input_partner_changes_gets_a_matrix_of_its_own() -> None:
    class Pair(torch.nn.Module):  # b reads a's input in the first batch only
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.calls = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), 0

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            x = input_ids.float()
            self.calls += 1
            return self.a(x) + self.b(x if self.calls == 1 else x * 2)

    torch.manual_seed(0)
    model, x = Pair(), torch.randint(0, 5, (4, 4))
    names = {p.data_ptr(): n for n, p in model.named_parameters()}
    got = gram_matrices(model, Examples({"input_ids": x}, None, "classification", 2),
                        linear_modules(model, names))
    assert got["a.weight"] is not got["b.weight"]
    rows = x.float()
    assert_close(got["a.weight"], rows.T @ rows / 4)
    assert model.calls == 4  # the second batch broke the pairing: both batches again, unshared
    assert_close(got["b.weight"], (rows * 2).T @ (rows * 2) / 4)  # b's inputs in that pass


def test_grams_taken_a_layer_group_at_a_time_are_the_one_pass_bytes(
    vit_setup, run_merge, monkeypatch, tmp_path
) -> None:
    """One pass over the examples per layer (a tiny budget) gives the Gram files and the
    merged model that one pass for every layer gives."""
    from mergekit_like.datamerge import statistics

    folders, data = vit_setup
    text = recipe_text("regmean", folders, data, "alpha: 0.9")
    real = statistics.gram_matrices
    runs = {}
    for share in (1, 10**15):
        calls: list[list[str]] = []

        def spy(model, examples, modules, share_inputs=True, _calls=calls):  # noqa: ANN001, ANN202
            _calls.append(sorted(modules))
            return real(model, examples, modules, share_inputs)

        monkeypatch.setattr(statistics, "gram_matrices", spy)
        monkeypatch.setattr(statistics, "STATS_SHARE", share)
        monkeypatch.setenv("MERGEKIT_LIKE_CACHE", str(tmp_path / f"cache{share}"))
        out = run_merge(text)
        keys = [
            s["key"] for s in json.loads((out / "datamerge_report.json").read_text())["statistics"]
        ]
        files = [load_file(tmp_path / f"cache{share}" / "stats" / f"{k}.safetensors") for k in keys]
        runs[share] = (calls, files, (out / "model.safetensors").read_bytes())
    one, grouped = runs[1], runs[10**15]
    assert len(one[0]) == 3 and len(grouped[0]) == 6  # per ingredient: 1 pass, then 2
    assert sorted(sum(grouped[0][:2], [])) == one[0][0]  # the layer, then the classifier
    for a, b in zip(one[1], grouped[1], strict=True):
        assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert one[2] == grouped[2]


def test_layer_groups_keep_layers_whole_within_the_budget() -> None:
    from mergekit_like.datamerge.statistics import layer_groups

    lin = {f"l{i}.{p}": (torch.nn.Linear(4, 3), False) for i in range(3) for p in "ab"}
    lin["head"] = (torch.nn.Linear(4, 2), False)
    layers = {n: (None if n == "head" else int(n[1])) for n in lin}
    per_layer = 2 * 4 * 4 * 4  # two [4, 4] float32 matrices
    groups = layer_groups(lin, layers, 2 * per_layer)
    assert [sorted(g) for g in groups] == [
        ["l0.a", "l0.b", "l1.a", "l1.b"],
        ["head", "l2.a", "l2.b"],
    ]
    assert [sorted(g) for g in layer_groups(lin, layers, 1)] == [
        ["l0.a", "l0.b"],
        ["l1.a", "l1.b"],
        ["l2.a", "l2.b"],
        ["head"],
    ]


def _regmean_as_written(ws, grams, alpha, transposed):  # noqa: ANN001, ANN202
    """RegMean's closed form in float64 with every sum held whole: the unset-feature rows
    take the weights' mean, then one solve."""
    gs = [alpha * g.double() + (1 - alpha) * torch.diag(torch.diagonal(g.double())) for g in grams]
    wts = [w.double() if transposed else w.double().T for w in ws]
    lhs, rhs, wsum = gs[0], gs[0] @ wts[0], 0 + wts[0]
    for g, wt in zip(gs[1:], wts[1:], strict=True):
        lhs, rhs, wsum = lhs + g, rhs + g @ wt, wsum + wt
    unused = torch.diagonal(lhs) == 0
    lhs, rhs = lhs.clone(), rhs.clone()
    lhs[unused, unused] = 1.0
    rhs[unused] = (wsum / len(ws))[unused]
    out = torch.linalg.solve(lhs, rhs).float()
    return out if transposed else out.T.contiguous()


def test_streamed_solve_is_the_formula_held_whole_bit_for_bit() -> None:
    """regmean_merge (Grams read twice, only the unset features' weight rows summed) gives
    the bytes of the formula with every sum held whole, with and without unset features."""
    gen = torch.Generator().manual_seed(11)
    for unset in ([], [0, 3]):
        ws, grams = [], []
        for _ in range(3):
            x = torch.randn(40, 6, generator=gen)
            x[:, unset] = 0.0
            grams.append((x.T @ x / 40).float())
            ws.append(torch.randn(5, 6, generator=gen))
        for alpha in (0.95, 1.0):
            want = _regmean_as_written(ws, grams, alpha, False)
            assert torch.equal(regmean_merge(ws, grams, alpha, transposed=False), want)
            got = regmean_merge([w.T for w in ws], grams, alpha, transposed=True)
            assert torch.equal(got, _regmean_as_written([w.T for w in ws], grams, alpha, True))


def test_scaled_gram_is_the_sum_written_out() -> None:
    from mergekit_like.datamerge.solve import scaled_gram

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(30, 7, generator=gen, dtype=torch.float64)
    g = x.T @ x
    g[0, 1] = -0.0
    g[2, 2] = float("inf")
    for alpha in (0.95, 0.5, 1.0, 0.0):
        want = alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))
        got = scaled_gram(g, alpha)
        assert torch.equal(got.view(torch.int64), want.view(torch.int64)), alpha
