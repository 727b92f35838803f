"""LoRA ingredients (``model+adapter``): W + scale * B @ A, applied per tensor while streaming."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.conftest import load_tensors, write_recipe


def _adapter(folder: Path, base: dict[str, torch.Tensor], modules: list[str], r: int = 4,
             alpha: float = 8.0, transpose: bool = False, **config) -> dict[str, tuple]:
    """Write a PEFT-format adapter; returns module -> (A, B)."""
    g = torch.Generator().manual_seed(3)
    tensors, factors = {}, {}
    for m in modules:
        w = base[f"{m}.weight"]
        out_dim, in_dim = (w.shape[1], w.shape[0]) if transpose else w.shape
        a = torch.randn(r, in_dim, generator=g) * 0.1
        b = torch.randn(out_dim, r, generator=g) * 0.1
        tensors[f"base_model.model.{m}.lora_A.weight"] = a
        tensors[f"base_model.model.{m}.lora_B.weight"] = b
        factors[m] = (a, b)
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj"],
           "fan_in_fan_out": transpose, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return factors


MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_adapter_applied_as_peft_merges_it(tmp_path, llama_family, run_cli):
    base = load_tensors(llama_family["base"])
    factors = _adapter(tmp_path / "lora", base, MODULES)
    recipe = write_recipe(tmp_path, f"merge_method: passthrough\nmodels:\n"
                                    f"  - model: {llama_family['base']}+{tmp_path / 'lora'}\n")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    expected = dict(base)
    for m, (a, b) in factors.items():
        expected[f"{m}.weight"] = base[f"{m}.weight"] + (8.0 / 4) * (b @ a)
    assert set(out) == set(base)
    for n, t in out.items():
        torch.testing.assert_close(t, expected[n])
    assert not torch.equal(out[f"{MODULES[0]}.weight"], base[f"{MODULES[0]}.weight"])


def test_lora_ingredient_in_a_chunked_linear_merge(tmp_path, llama_family, run_cli):
    base, math_ = load_tensors(llama_family["base"]), load_tensors(llama_family["math"])
    factors = _adapter(tmp_path / "lora", base, MODULES, r=2, alpha=3.0, use_rslora=True)
    recipe = write_recipe(tmp_path, f"""merge_method: linear
models:
  - model: {llama_family['math']}
  - model: {llama_family['base']}+{tmp_path / 'lora'}
""")
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--chunk-size", "256B")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    scale = 3.0 / math.sqrt(2)  # rsLoRA
    for n, t in out.items():
        m = n.removesuffix(".weight")
        adapted = base[n] + scale * (factors[m][1] @ factors[m][0]) if m in factors else base[n]
        torch.testing.assert_close(t, (math_[n] + adapted) / 2)


def test_fan_in_fan_out_layers_get_the_transpose(tmp_path, gpt2_family, run_cli):
    base = load_tensors(gpt2_family["base"])
    module = "transformer.h.0.attn.c_attn"
    factors = _adapter(tmp_path / "lora", base, [module], transpose=True)
    recipe = write_recipe(tmp_path, f"merge_method: passthrough\nmodels:\n"
                                    f"  - model: {gpt2_family['base']}+{tmp_path / 'lora'}\n")
    assert run_cli(recipe, tmp_path / "out", "--quiet").code == 0
    a, b = factors[module]
    got = load_tensors(tmp_path / "out")[f"{module}.weight"]
    torch.testing.assert_close(got, base[f"{module}.weight"] + 2.0 * (b @ a).T)


def test_adapter_for_another_model_is_a_clear_error(tmp_path, llama_family, run_cli):
    base = load_tensors(llama_family["base"])
    _adapter(tmp_path / "lora", {"model.layers.9.mlp.up_proj.weight":
                                 base["model.layers.0.mlp.up_proj.weight"]},
             ["model.layers.9.mlp.up_proj"])
    recipe = write_recipe(tmp_path, f"merge_method: passthrough\nmodels:\n"
                                    f"  - model: {llama_family['base']}+{tmp_path / 'lora'}\n")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert "recipe.yaml:3: models[0].model:" in res.err
    assert "adapter targets 'model.layers.9.mlp.up_proj'" in res.err
    assert not (tmp_path / "out").exists()
