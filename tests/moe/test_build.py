"""`merge moe`: Mixtral, Qwen2-MoE and Qwen3-MoE built from tiny dense models, checked
tensor by tensor against the models they come from, and loaded by transformers."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_tensors, write_recipe
from tests.moe.conftest import PROMPTS, moe_yaml

# (build, output class, shared expert); "llama-q2" is Llama experts built as Qwen2-MoE
OUTPUTS = [
    ("llama", "MixtralForCausalLM", None),
    ("mistral", "MixtralForCausalLM", None),
    ("qwen2", "Qwen2MoeForCausalLM", "chat"),
    ("llama-q2", "Qwen2MoeForCausalLM", "chat"),
    ("qwen3", "Qwen3MoeForCausalLM", None),
]
#: transformers 5 loads a qwen2 model's tokenizer as Qwen2Tokenizer whatever its
#: tokenizer_config says, which drops the tiny word-level vocabulary's words: the prompts
#: of a Qwen2 base become BOS alone, so routing is checked on Llama experts built as Qwen2-MoE
ROUTED = [o for o in OUTPUTS if o[0] != "qwen2"]


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)


@pytest.fixture(scope="module")
def built(dense, tmp_path_factory, run_cli_module):
    """``built(kind)``: the MoE of ``kind``'s base with the math and code experts (and the
    chat model as Qwen2-MoE's shared expert), built once."""
    made = {}

    def get(kind):
        if kind not in made:
            shared = next(s for k, _, s in OUTPUTS if k == kind)
            root = tmp_path_factory.mktemp(f"built-{kind}")
            models = dense(kind.removesuffix("-q2"))
            extra = "architecture: qwen2_moe\n" if kind.endswith("-q2") else ""
            cfg = write_recipe(root, moe_yaml(models, shared=shared, negative=True, extra=extra))
            res = run_cli_module("moe", cfg, root / "out")
            assert res.code == 0, res.err
            made[kind] = (models, root / "out")
        return made[kind]

    return get


@pytest.fixture(scope="module")
def run_cli_module():
    from mergekit_like.cli import main

    class Res:
        def __init__(self, code, err):
            self.code, self.err = code, err

    def run(*args):
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        return Res(code, err.getvalue())

    return run


@pytest.mark.parametrize(("kind", "cls", "shared"), OUTPUTS)
def test_output_loads_with_every_tensor_from_its_source(built, kind, cls, shared):
    from transformers import AutoModelForCausalLM

    models, out = built(kind)
    model, info = _load(out)
    assert type(model).__name__ == cls
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    for name in ("config.json", "tokenizer.json", "README.md", "mergekit_moe_config.yml"):
        assert (out / name).is_file(), name
    base = AutoModelForCausalLM.from_pretrained(models["base"]).state_dict()
    experts = [
        AutoModelForCausalLM.from_pretrained(models[n]).state_dict() for n in ("math", "code")
    ]
    got = model.state_dict()
    for name, value in base.items():
        if ".mlp." not in name:
            assert torch.equal(got[name], value), name
    for layer in range(2):
        p = f"model.layers.{layer}.mlp"
        for e, sd in enumerate(experts):
            gate_up = torch.cat([sd[f"{p}.gate_proj.weight"], sd[f"{p}.up_proj.weight"]])
            assert torch.equal(got[f"{p}.experts.gate_up_proj"][e], gate_up)
            assert torch.equal(got[f"{p}.experts.down_proj"][e], sd[f"{p}.down_proj.weight"])
        if kind == "llama-q2":  # Qwen2-MoE has attention biases; a Llama base has none
            for proj in ("q_proj", "k_proj", "v_proj"):
                bias = got[f"model.layers.{layer}.self_attn.{proj}.bias"]
                assert torch.equal(bias, torch.zeros_like(bias))
        if shared:
            sd = AutoModelForCausalLM.from_pretrained(models[shared]).state_dict()
            for proj in ("gate_proj", "up_proj", "down_proj"):
                assert torch.equal(
                    got[f"{p}.shared_expert.{proj}.weight"], sd[f"{p}.{proj}.weight"]
                )


def _mergekit_rows(base, prompts_pos, prompts_neg, average=False):
    """mergekit-moe's router row formula, written out: the base model (bfloat16) run whole
    on BOS-prefixed, left-padded prompts; the state entering each layer at the last token
    (or the mean over positions), averaged over prompts; positive minus negative; unit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    tok.pad_token_id = tok.bos_token_id

    def states(prompts):
        enc = tok(
            [tok.bos_token + p for p in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        hs = torch.stack(hs[:-1])  # (layers, batch, seq, hidden): each layer's input
        hs = hs.sum(dim=2) / hs.shape[2] if average else hs[:, :, -1, :]
        return hs.sum(dim=1) / hs.shape[1]

    h = states(prompts_pos)
    if prompts_neg:
        h = h - states(prompts_neg)
    return h / h.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)


def _negatives(name):
    other = next(n for n in PROMPTS if n != name)
    return [PROMPTS[other], "w9 w8"]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama-q2", "qwen3"])
def test_hidden_router_rows_are_the_base_models_hidden_states(built, kind):
    models, out = built(kind)
    shared = kind in ("qwen2", "llama-q2")
    got = load_tensors(out)
    for e, name in enumerate(("math", "code")):
        want = _mergekit_rows(models["base"], [PROMPTS[name]], _negatives(name))
        for layer in range(2):
            row = got[f"model.layers.{layer}.mlp.gate.weight"][e]
            assert row.dtype == torch.float32  # the base's dtype
            assert torch.equal(row, want[layer].float()), (name, layer)
    if shared:  # the shared expert's gate: its prompts' row, no negatives
        want = _mergekit_rows(models["base"], [PROMPTS["chat"]], None)
        for layer in range(2):
            row = got[f"model.layers.{layer}.mlp.shared_expert_gate.weight"]
            assert torch.equal(row, want[layer].float()[None])


def test_hidden_avg_uses_the_mean_over_positions(dense, tmp_path, run_cli):
    models = dense("llama")
    cfg = moe_yaml(models, gate_mode="hidden_avg").replace(
        f'["{PROMPTS["math"]}"]', f'["{PROMPTS["math"]}", "w7 w8"]'
    )
    res = run_cli("moe", write_recipe(tmp_path, cfg), tmp_path / "out")
    assert res.code == 0, res.err
    got = load_tensors(tmp_path / "out")
    for e, prompts in enumerate(([PROMPTS["math"], "w7 w8"], [PROMPTS["code"]])):
        want = _mergekit_rows(models["base"], prompts, None, average=True)
        for layer in range(2):
            assert torch.equal(got[f"model.layers.{layer}.mlp.gate.weight"][e], want[layer].float())


@pytest.mark.parametrize(("kind", "cls", "shared"), ROUTED)
def test_a_prompt_routes_to_its_expert(built, kind, cls, shared):
    from transformers import AutoTokenizer

    _, out = built(kind)
    model, _ = _load(out)
    tok = AutoTokenizer.from_pretrained(out)
    for e, name in enumerate(("math", "code")):
        ids = tok(
            tok.bos_token + PROMPTS[name], return_tensors="pt", add_special_tokens=False
        ).input_ids
        with torch.no_grad():
            logits = model(ids, output_router_logits=True).router_logits
        assert len(logits) == 2
        for layer, lg in enumerate(logits):
            top = lg.reshape(-1, lg.shape[-1])[-1].argmax().item()  # the last token
            assert top == e, (name, layer, lg)


def test_cheap_embed_rows_are_mean_token_embeddings(dense, tmp_path, run_cli):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    models = dense("llama")
    cfg = moe_yaml(models, gate_mode="cheap_embed", negative=True)
    assert run_cli("moe", write_recipe(tmp_path, cfg), tmp_path / "out").code == 0
    got = load_tensors(tmp_path / "out")
    embed = load_file(models["base"] / "model.safetensors")["model.embed_tokens.weight"]
    tok = AutoTokenizer.from_pretrained(models["base"])
    tok.padding_side, tok.pad_token_id = "left", tok.bos_token_id

    def row(prompts):
        enc = tok(
            [tok.bos_token + p for p in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        onehot = torch.nn.functional.one_hot(enc.input_ids, num_classes=embed.shape[0])
        h = onehot.float() @ embed.float()
        s = (h * enc.attention_mask.unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
        return s / s.norm(dim=-1, keepdim=True).clamp(min=1e-8)

    for e, name in enumerate(("math", "code")):
        want = row([PROMPTS[name]]) - row(_negatives(name))
        want = want / want.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        for layer in range(2):
            torch.testing.assert_close(
                got[f"model.layers.{layer}.mlp.gate.weight"][e], want[0], rtol=0, atol=0
            )


def test_random_gate_is_seeded(dense, tmp_path, run_cli):
    models = dense("llama")
    cfg = write_recipe(tmp_path, moe_yaml(models, gate_mode="random"))
    for out, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run_cli("moe", cfg, tmp_path / out, "--seed", seed).code == 0
    a, b, c = (load_tensors(tmp_path / x) for x in "abc")
    want = torch.randn((2, 2, 32), generator=torch.Generator().manual_seed(3))
    for layer in range(2):
        name = f"model.layers.{layer}.mlp.gate.weight"
        assert torch.equal(a[name], want[layer])
        assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])


def test_residual_and_noise_scale(dense, tmp_path, run_cli):
    from transformers import AutoModelForCausalLM

    models = dense("llama")
    cfg = (
        moe_yaml(models)
        .replace(f'["{PROMPTS["math"]}"]', f'["{PROMPTS["math"]}"]\n    residual_scale: 0.5')
        .replace(f'["{PROMPTS["code"]}"]', f'["{PROMPTS["code"]}"]\n    noise_scale: 0.01')
    )
    cfg = write_recipe(tmp_path, cfg)
    assert run_cli("moe", cfg, tmp_path / "a").code == 0
    assert run_cli("moe", cfg, tmp_path / "b").code == 0
    got, again = load_tensors(tmp_path / "a"), load_tensors(tmp_path / "b")
    math = AutoModelForCausalLM.from_pretrained(models["math"]).state_dict()
    code = AutoModelForCausalLM.from_pretrained(models["code"]).state_dict()
    p = "model.layers.1.mlp"
    assert torch.equal(got[f"{p}.experts.down_proj"][0], math[f"{p}.down_proj.weight"] * 0.5)
    assert torch.equal(got[f"{p}.experts.gate_up_proj"][0][:64], math[f"{p}.gate_proj.weight"])
    noise = got[f"{p}.experts.down_proj"][1] - code[f"{p}.down_proj.weight"]
    assert 0.005 < noise.std().item() < 0.02  # noise of scale 0.01, not residual-scaled
    assert torch.equal(got[f"{p}.experts.down_proj"][1], again[f"{p}.experts.down_proj"][1])


def test_merge_runs_a_moe_config_too_and_shards(dense, tmp_path, run_cli):
    models = dense("qwen3")
    cfg = write_recipe(
        tmp_path,
        moe_yaml(models, extra="architecture: qwen3_moe\ndtype: bfloat16\nexperts_per_token: 1\n"),
    )
    res = run_cli(cfg, tmp_path / "out", "--out-shard-size", "20KB")
    assert res.code == 0, res.err
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1
    model, info = _load(tmp_path / "out")
    assert not any(info.values())
    assert model.config.num_experts_per_tok == 1 and model.dtype == torch.bfloat16
