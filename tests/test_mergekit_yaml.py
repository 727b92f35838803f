"""mergekit-yaml: mergekit's command line runs the same merge as `merge`, byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mergekit_like.mergekit_yaml import _parser, merge_argv
from mergekit_like.mergekit_yaml import main as mergekit_yaml
from tests.conftest import write_recipe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_yaml(capsys):
    def run(*args):
        code = mergekit_yaml([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def dare_recipe(tmp_path, llama_family):
    f = llama_family
    return write_recipe(
        tmp_path,
        f"""
merge_method: dare_ties
base_model: {f["base"]}
models:
  - model: {f["math"]}
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {f["code"]}
    parameters: {{weight: 0.7, density: 0.6}}
""",
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_script_is_registered():
    text = (ROOT / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]")[1].split("\n[")[0]
    assert re.search(r'^mergekit-yaml = "mergekit_like.mergekit_yaml:main"$', scripts, re.M)


@pytest.fixture(autouse=True)
def _restore_threads():
    """-j sets torch's thread count for the process: put it back after each test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["--device", "cpu", "--out-shard-size", "5000000000"]),
        (
            [
                "--cuda",
                "--random-seed",
                "3",
                "--out-shard-size",
                "1G",
                "--allow-crimes",
                "--no-copy-tokenizer",
                "--no-write-model-card",
                "--quiet",
                "--force",
            ],
            [
                "--device",
                "cuda",
                "--out-shard-size",
                "1000000000",
                "--seed",
                "3",
                "--allow-crimes",
                "--no-copy-tokenizer",
                "--no-model-card",
                "--quiet",
                "--force",
            ],
        ),
        (
            ["--trust-remote-code"],
            ["--device", "cpu", "--out-shard-size", "5000000000", "--trust-remote-code"],
        ),
        (
            ["--gpu-rich", "--device", "auto", "--copy-tokenizer", "--out-shard-size", "500M"],
            ["--device", "auto", "--out-shard-size", "500000000"],
        ),
    ],
)
def test_options_map_onto_merge(args, expected):
    ns = _parser().parse_args(["r.yaml", "out", *args])
    assert merge_argv(ns) == ["r.yaml", "out", *expected]


def test_same_bytes_as_merge(tmp_path, dare_recipe, run_cli, run_yaml):
    res = run_cli(
        dare_recipe, tmp_path / "a" / "out", "--quiet", "--seed", "7", "--out-shard-size", "20K"
    )
    assert res.code == 0, res.err
    code, _, err = run_yaml(
        dare_recipe,
        tmp_path / "b" / "out",
        "--random-seed",
        "7",
        "--out-shard-size",
        "20K",
        "--quiet",
        "--lazy-unpickle",
        "-j",
        "2",
        "--copy-tokenizer",
        "--no-trust-remote-code",
    )
    assert code == 0, err
    assert err.strip() == (
        "note: --lazy-unpickle is not needed here (tensors are read lazily, "
        "a chunk at a time); ignored"
    )
    a, b = _files(tmp_path / "a" / "out"), _files(tmp_path / "b" / "out")
    assert a.keys() == b.keys()
    provenance = ("README.md", "merge_recipe.yaml")  # they record each command line
    assert {n: v for n, v in a.items() if n not in provenance} == \
        {n: v for n, v in b.items() if n not in provenance}
    assert len([n for n in a if n.endswith(".safetensors")]) > 1  # 20K = 20,000 bytes a shard
    assert "tokenizer.json" in a and "README.md" in a


@pytest.mark.parametrize("size", ["5B", "1G", "500M"])
def test_shard_sizes_read_as_mergekit_reads_them(tmp_path, dare_recipe, run_cli, run_yaml, size):
    # 5B is five billion bytes: one file for a tiny model, not one file per tensor
    code, _, err = run_yaml(dare_recipe, tmp_path / "y", "--out-shard-size", size, "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "y").glob("*.safetensors")) == ["model.safetensors"]
    res = run_cli(dare_recipe, tmp_path / "m", "--out-shard-size", size, "--quiet")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (tmp_path / "m").glob("*.safetensors")) == ["model.safetensors"]


def test_no_copy_tokenizer_and_no_model_card(tmp_path, dare_recipe, run_yaml):
    code, _, err = run_yaml(
        dare_recipe, tmp_path / "out", "--no-copy-tokenizer", "--no-write-model-card", "--quiet"
    )
    assert code == 0, err
    names = set(_files(tmp_path / "out"))
    assert names == {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "merge_recipe.yaml",
    }
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]


def test_allow_crimes_is_passed_on(tmp_path, llama_family, run_yaml):
    import shutil

    qwen = tmp_path / "qwen"
    shutil.copytree(llama_family["code"], qwen)
    cfg = json.loads((qwen / "config.json").read_text())
    (qwen / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    recipe = write_recipe(
        tmp_path,
        f"merge_method: linear\nmodels:\n  - model: {llama_family['math']}\n  - model: {qwen}\n",
    )
    code, _, err = run_yaml(recipe, tmp_path / "out", "--quiet")
    assert code == 2 and "architectures differ" in err and "--allow-crimes" in err
    code, _, err = run_yaml(recipe, tmp_path / "out", "--quiet", "--allow-crimes")
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "error: mergekit-yaml: unrecognized arguments: --frobnicate"),
        (["--out-shard-size", "5 parsecs"], "error: --out-shard-size: bad size '5 parsecs'"),
        (["--device", "tpu"], "error: --device: expected cpu, cuda or auto, got 'tpu'"),
        (["--unsafe-truncate-embeddings"], "error: --unsafe-truncate-embeddings: not supported"),
        (["--lazy"], "error: mergekit-yaml: unrecognized arguments: --lazy"),  # no abbreviations
    ],
)
def test_bad_options_are_one_line_exit_2(tmp_path, dare_recipe, run_yaml, args, message):
    code, out, err = run_yaml(dare_recipe, tmp_path / "out", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert not (tmp_path / "out").exists()
