"""The `merge` command end to end on tiny models: numbers, output folder, errors, options."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_like.recipe.models import Recipe
from tests.conftest import load_tensors, write_recipe


def _linear(f: dict[str, Path], a: str = "math", b: str = "code", wa: float = 0.25,
            wb: float = 0.75) -> str:
    return f"""merge_method: linear
models:
  - model: {f[a]}
    parameters: {{weight: {wa}}}
  - model: {f[b]}
    parameters: {{weight: {wb}}}
"""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _logits(folder: Path | None, state: dict | None = None, config_from: Path | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    if folder is not None:
        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_from))
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("lm_head" in m for m in missing)
        model.tie_weights()
    model.eval()
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    with torch.no_grad():
        return model(ids).logits


def test_sharded_in_and_out_and_loads_in_transformers(tmp_path, sharded_family, run_cli):
    f = sharded_family
    assert len(list(f["x"].glob("*.safetensors"))) > 1  # the fixture really is sharded
    res = run_cli(write_recipe(tmp_path, _linear(f, "x", "y")), tmp_path / "out",
                  "--out-shard-size", "40KB", "--quiet")
    assert res.code == 0, res.err
    out = tmp_path / "out"
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    merged = load_tensors(out)
    x, y = load_tensors(f["x"]), load_tensors(f["y"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in merged.values())
    expected = {n: 0.25 * x[n] + 0.75 * y[n] for n in x}
    for n, t in merged.items():
        torch.testing.assert_close(t, expected[n])
    torch.testing.assert_close(_logits(out), _logits(None, expected, f["x"]))


def test_gpt2_tied_merge_matches_formula_logits(tmp_path, gpt2_family, run_cli):
    f = gpt2_family
    res = run_cli(write_recipe(tmp_path, _linear(f, wa=1.0, wb=3.0)), tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b = load_tensors(f["math"]), load_tensors(f["code"])
    expected = {n: (a[n] + 3 * b[n]) / 4 for n in a}
    assert set(load_tensors(tmp_path / "out")) == set(a)
    torch.testing.assert_close(_logits(tmp_path / "out"), _logits(None, expected, f["math"]))


def test_pickled_bin_ingredient(tmp_path, llama_family, bin_model, run_cli):
    res = run_cli(write_recipe(tmp_path, f"""merge_method: task_arithmetic
base_model: {llama_family['base']}
models:
  - model: {bin_model}
    parameters: {{weight: 0.5}}
"""), tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    base = load_tensors(llama_family["base"])
    ft = torch.load(bin_model / "pytorch_model.bin", weights_only=True)
    for n, t in load_tensors(tmp_path / "out").items():
        torch.testing.assert_close(t, base[n] + 0.5 * (ft[n] - base[n]))


def test_passthrough_slices_stack_layers(tmp_path, llama4_family, run_cli):
    f = llama4_family
    res = run_cli(write_recipe(tmp_path, f"""merge_method: passthrough
slices:
  - sources: [{{model: {f['a']}, layer_range: [0, 2]}}]
  - sources: [{{model: {f['b']}, layer_range: [1, 4]}}]
"""), tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    out, a, b = load_tensors(tmp_path / "out"), load_tensors(f["a"]), load_tensors(f["b"])
    assert torch.equal(out["model.layers.1.self_attn.k_proj.weight"],
                       a["model.layers.1.self_attn.k_proj.weight"])
    assert torch.equal(out["model.layers.4.mlp.gate_proj.weight"],
                       b["model.layers.3.mlp.gate_proj.weight"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 5
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert len(model.model.layers) == 5


def test_output_folder_contents(tmp_path, llama_family, run_cli):
    f = llama_family
    text = _linear(f) + "name: soup-1\nchat_template: chatml\n"
    res = run_cli(write_recipe(tmp_path, text), tmp_path / "out")
    assert res.code == 0, res.err
    assert "wrote" in res.out
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md", "merge_recipe.yaml",
            "chat_template.jinja"} <= names
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front  # local folders are not hub metadata
    assert f"- `{f['math']}` (local folder)" in card
    assert "merge" in front["tags"]
    assert "# soup-1" in card and "merge_method: linear" in card
    resolved = Recipe.model_validate(yaml.safe_load((out / "merge_recipe.yaml").read_text()))
    assert resolved.models[1].parameters["weight"] == 0.75
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_cfg["chat_template"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("w7") == 11
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left


def test_overrides_on_the_command_line(tmp_path, llama_family, run_cli):
    f = llama_family
    recipe = write_recipe(tmp_path, _linear(f))
    res = run_cli(recipe, tmp_path / "out", "models.0.parameters.weight=3",
                  "parameters.normalize=false", "--quiet")
    assert res.code == 0, res.err
    a, b = load_tensors(f["math"]), load_tensors(f["code"])
    for n, t in load_tensors(tmp_path / "out").items():
        torch.testing.assert_close(t, 3 * a[n] + 0.75 * b[n])


@pytest.mark.parametrize(("recipe", "message"), [
    ("merge_method: linear\nmodels:\n  - model: M\n    parameters: {weight: abc}\n",
     "recipe.yaml:4: models[0].parameters.weight: expected a number, got 'abc'"),
    ("merge_method: lineer\nmodels: [{model: M}]\n",
     "recipe.yaml:1: merge_method: unknown merge method 'lineer'; known methods:"),
    ("merge_method: linear\nmodels: [{model: M}]\ntokenzer_source: base\n",
     "recipe.yaml:3: tokenzer_source: unknown key; did you mean 'tokenizer_source'?"),
    ("merge_method: linear\nmodels: [{model: /does/not/exist}]\n",
     "recipe.yaml:2: models[0].model: model '/does/not/exist' is not a local folder"),
    ("merge_method: passthrough\nslices:\n  - sources:\n      - {model: M, layer_range: [0, 9]}\n",
     "recipe.yaml:4: slices[0].sources[0].layer_range: layer_range [0, 9) is outside model"),
    ("merge_method: linear\nmodels: [{model: M, parameters: {weight: 0}}]\n",
     "merge method 'linear' failed: the weights sum to zero"),
])
def test_bad_recipes_exit_2_with_one_line_and_leave_nothing(tmp_path, llama_family, run_cli,
                                                            recipe, message):
    before = _digest(llama_family["math"])
    path = write_recipe(tmp_path, recipe.replace("M", str(llama_family["math"])))
    res = run_cli(path, tmp_path / "out", "--quiet")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
    assert _digest(llama_family["math"]) == before


def test_existing_output_needs_force_and_survives_a_failed_run(tmp_path, llama_family, run_cli):
    f = llama_family
    out = tmp_path / "out"
    assert run_cli(write_recipe(tmp_path, _linear(f)), out, "--quiet").code == 0
    first = _digest(out)
    res = run_cli(write_recipe(tmp_path, _linear(f)), out, "--quiet")
    assert res.code == 2 and "already exists; pass --force" in res.err
    bad = write_recipe(tmp_path, _linear(f, wa=1.0, wb=-1.0), "bad.yaml")
    assert run_cli(bad, out, "--quiet", "--force").code == 2
    assert _digest(out) == first  # the failed run did not touch the existing output
    res = run_cli(write_recipe(tmp_path, _linear(f, wa=1.0, wb=1.0)), out, "--quiet", "--force")
    assert res.code == 0 and _digest(out) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "out", "recipe.yaml"]


def test_refuses_to_write_over_an_ingredient(tmp_path, llama_family, run_cli):
    copy = tmp_path / "m"
    shutil.copytree(llama_family["math"], copy)
    res = run_cli(write_recipe(tmp_path, f"merge_method: linear\nmodels: [{{model: {copy}}}]\n"),
                  copy, "--force", "--quiet")
    assert res.code == 2 and "would overwrite ingredient model" in res.err
    assert (copy / "model.safetensors").is_file()


def test_validate_plan_methods_schema(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, _linear(llama_family))
    res = run_cli("validate", recipe)
    assert res.code == 0 and "ok (linear, 2 models" in res.out
    hub = write_recipe(tmp_path, "merge_method: linear\nmodels: [{model: acme/absent-model}]\n",
                       "hub.yaml")
    res = run_cli("validate", hub)
    assert res.code == 0 and "not checked, as 1 model(s) are not reachable" in res.out
    assert "'acme/absent-model' is not in the Hugging Face cache" in res.out
    res = run_cli("validate", recipe, "models.0.parameters.weight=x")
    assert res.code == 2 and "command line: models[0].parameters.weight" in res.err
    res = run_cli("plan", recipe)
    assert res.code == 0
    lines = res.out.strip().splitlines()
    assert lines[0].startswith("model.embed_tokens.weight\t[64, 32]\tF32\tlinear")
    assert "tensors: 21" in lines[-1] and "estimated peak memory" in lines[-1]
    assert not (tmp_path / "out").exists()
    res = run_cli("methods")
    assert res.code == 0 and "ties:" in res.out and "per-model density (default 1.0)" in res.out
    res = run_cli("schema")
    assert json.loads(res.out)["title"] == "mergekit_like recipe"


def test_device_and_option_errors(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, _linear(llama_family))
    if not torch.cuda.is_available():
        res = run_cli(recipe, tmp_path / "out", "--device", "cuda", "--quiet")
        assert res.code == 2 and "no CUDA device" in res.err
    res = run_cli(recipe, tmp_path / "out", "--out-shard-size", "lots", "--quiet")
    assert res.code == 2 and "bad size 'lots'" in res.err
    res = run_cli(recipe, tmp_path / "out", "--max-gpu-memory", "4GiB", "--quiet")
    assert res.code == 2 and "--max-gpu-memory: applies to --device cuda" in res.err
    res = run_cli(recipe, tmp_path / "out", "--device", "auto", "--max-gpu-memory", "x",
                  "--quiet")
    assert res.code == 2 and "--max-gpu-memory: bad size 'x'" in res.err
    res = run_cli(recipe, tmp_path / "out", "--device", "auto", "--quiet")
    assert res.code == 0, res.err
    assert not list(tmp_path.glob(".out.*"))


def test_tokenizer_source_names_a_model(tmp_path, llama_family, run_cli):
    other = tmp_path / "other"
    shutil.copytree(llama_family["code"], other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 123
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    text = _linear(llama_family) + f"tokenizer_source: {other}\n"
    assert run_cli(write_recipe(tmp_path, text), tmp_path / "out", "--quiet").code == 0
    got = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert got["model_max_length"] == 123


def test_chunked_execution_matches_whole_tensors(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, _linear(llama_family))
    assert run_cli(recipe, tmp_path / "a", "--quiet").code == 0
    assert run_cli(recipe, tmp_path / "b", "--quiet", "--chunk-size", "512B").code == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()


def test_processor_files_follow_the_tokenizer_source(tmp_path, llama_family, run_cli):
    model = tmp_path / "vision"
    shutil.copytree(llama_family["math"], model)
    (model / "preprocessor_config.json").write_text('{"image_mean": [0.5]}')
    code = llama_family["code"]
    text = f"merge_method: linear\nmodels: [{{model: {model}}}, {{model: {code}}}]\n"
    assert run_cli(write_recipe(tmp_path, text), tmp_path / "out", "--quiet").code == 0
    assert (tmp_path / "out" / "preprocessor_config.json").read_text() == '{"image_mean": [0.5]}'


def test_model_card_title_defaults_to_the_output_name(tmp_path, llama_family, run_cli):
    recipe = write_recipe(tmp_path, _linear(llama_family))
    assert run_cli(recipe, tmp_path / "my-soup", "--quiet").code == 0
    assert "\n# my-soup\n" in (tmp_path / "my-soup" / "README.md").read_text()


def test_kernels_flag_chooses_compiled_or_eager_with_the_same_bytes(tmp_path, ties_recipe,
                                                                   run_cli):
    for kernels in ("eager", "compiled"):  # DARE: the counter draws inside the kernels
        res = run_cli(ties_recipe, tmp_path / kernels, "merge_method=dare_ties", "--quiet",
                      "--kernels", kernels)
        assert res.code == 0, res.err
    assert (tmp_path / "eager" / "model.safetensors").read_bytes() == \
        (tmp_path / "compiled" / "model.safetensors").read_bytes()


def _code_tokenizer(tmp_path: Path, model: Path) -> tuple[Path, Path]:
    """A copy of ``model`` whose tokenizer_config.json names a class in the folder's own
    Python file (``auto_map``); importing that file writes the returned marker file."""
    evil, marker = tmp_path / "evil", tmp_path / "RAN"
    shutil.copytree(model, evil)
    cfg = json.loads((evil / "tokenizer_config.json").read_text())
    cfg.update(tokenizer_class="EvilTokenizer",
               auto_map={"AutoTokenizer": ["evil_tok.EvilTokenizer", None]})
    (evil / "tokenizer_config.json").write_text(json.dumps(cfg))
    (evil / "evil_tok.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return evil, marker


def test_no_code_from_an_ingredient_runs_without_trust_remote_code(tmp_path, llama_family):
    import os
    import subprocess
    import sys

    evil, marker = _code_tokenizer(tmp_path, llama_family["math"])
    recipe = write_recipe(tmp_path, f"merge_method: linear\nmodels: [{{model: "
                                    f"{llama_family['code']}}}, {{model: {evil}}}]\n"
                                    "tokenizer_source: union\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}

    def merge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mergekit_like", *args], input="y\n",
                              env=env, capture_output=True, text=True, timeout=120)

    for args in (["validate", str(recipe)], [str(recipe), str(tmp_path / "out"), "--quiet"]):
        res = merge(*args)
        assert not marker.exists(), "the ingredient's code ran"
        assert res.returncode == 2 and "wish to run" not in res.stdout + res.stderr, res.stderr
        assert res.stderr.splitlines() == [
            f"error: recipe.yaml:3: tokenizer_source: model {str(evil)!r}: {evil}: cannot load "
            "its tokenizer: it needs the Python code in the folder (auto_map), which runs only "
            "with --trust-remote-code"]
    assert not (tmp_path / "out").exists()
    res = merge("validate", str(recipe), "--trust-remote-code")
    assert res.returncode == 0 and marker.read_text() == "ran", res.stderr
