"""Shared fixtures: tiny models built on the fly (no downloads) and a CLI runner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mergekit_like.cli import main
from mergekit_like.demo import make_family, make_model, tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``merge ...`` in-process; returns exit code, stdout and stderr."""

    def run(*args: str | Path) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base + math/code/chat fine-tunes: LlamaForCausalLM, 2 layers, hidden 32, untied."""
    return make_family(tmp_path_factory.mktemp("llama"), "llama", layers=2, hidden=32)


@pytest.fixture(scope="session")
def llama4_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base + a/b fine-tunes: LlamaForCausalLM with 4 layers (for slices)."""
    return make_family(tmp_path_factory.mktemp("llama4"), "llama", names=("a", "b"), layers=4)


@pytest.fixture(scope="session")
def gpt2_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base + math/code fine-tunes: GPT2LMHeadModel (tied embeddings), 2 layers."""
    return make_family(tmp_path_factory.mktemp("gpt2"), "gpt2", names=("math", "code"))


@pytest.fixture(scope="session")
def sharded_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base + x/y fine-tunes saved as several safetensors shards with an index."""
    return make_family(tmp_path_factory.mktemp("sharded"), "llama", names=("x", "y"),
                       shard_size="40KB")


@pytest.fixture(scope="session")
def bin_model(tmp_path_factory: pytest.TempPathFactory, llama_family: dict[str, Path]) -> Path:
    """A fine-tune of llama_family's base saved as a pickled pytorch_model.bin."""
    return make_model(tmp_path_factory.mktemp("bin") / "binft", tiny_config("llama"), 42,
                      base=llama_family["base"], fmt="bin")


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    """Write a recipe file and return its path."""
    path = folder / name
    path.write_text(text)
    return path


def load_tensors(folder: Path) -> dict[str, object]:
    """Every tensor of a model folder (safetensors, single or sharded), as torch tensors."""
    from safetensors.torch import load_file

    out: dict[str, object] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture
def ties_recipe(tmp_path: Path, llama_family: dict[str, Path]) -> Path:
    """TIES over llama_family (two models, float32)."""
    return write_recipe(tmp_path, f"""
merge_method: ties
base_model: {llama_family['base']}
models:
  - model: {llama_family['math']}
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {llama_family['code']}
    parameters: {{weight: 0.5, density: 0.7}}
dtype: float32
""")

