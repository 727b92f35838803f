"""Run mergekit-moe 0.1.5 and `merge moe` on the same tiny dense models and configs and
compare the outputs tensor by tensor (names, dtypes, exact bytes) and config.json.

    .venv/bin/python bench/parity/moe_parity.py --mergekit-venv /work/venvs/mk

Prints one row per case: tensors compared, tensors differing, largest absolute difference,
and the config.json keys that differ. Models and outputs go to bench/work/moe-parity/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.moe.conftest import PROMPTS, make_dense, moe_yaml  # noqa: E402

# name: (dense kind, moe_yaml arguments, extra YAML, mergekit's extra YAML if different)
CASES = {
    "llama-mixtral-hidden": ("llama", {}, "", None),
    "llama-mixtral-hidden-neg": ("llama", {"negative": True}, "", None),
    "llama-mixtral-hidden_avg": ("llama", {"gate_mode": "hidden_avg", "negative": True}, "", None),
    "llama-mixtral-cheap_embed": (
        "llama",
        {"gate_mode": "cheap_embed", "negative": True},
        "",
        None,
    ),
    "llama-mixtral-random": ("llama", {"gate_mode": "random"}, "", None),
    "llama-mixtral-bf16-k1": ("llama", {}, "dtype: bfloat16\nexperts_per_token: 1\n", None),
    "mistral-mixtral-hidden": ("mistral", {"negative": True}, "", None),
    "qwen3-qwen3moe-hidden": (
        "qwen3",
        {"negative": True},
        "architecture: qwen3_moe\n",
        "architecture: qwen3\n",
    ),
    # mergekit's Qwen MoE opens no loader for a shared expert that is not also an expert
    # (AttributeError), so the shared expert here is one of the experts
    "llama-qwen2moe-hidden": (
        "llama",
        {"shared": "math"},
        "architecture: qwen2_moe\n",
        "architecture: qwen\n",
    ),
}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def compare(ours: Path, theirs: Path) -> str:
    a, b = tensors(ours), tensors(theirs)
    if set(a) != set(b):
        return f"names differ: {sorted(set(a) ^ set(b))[:4]}"
    bad, worst = 0, 0.0
    for name in a:
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            bad += 1
            if x.shape == y.shape:
                worst = max(worst, (x.float() - y.float()).abs().max().item())
    ca = json.loads((ours / "config.json").read_text())
    cb = json.loads((theirs / "config.json").read_text())
    keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    return f"{len(a)} tensors, {bad} differ, max |diff| {worst:.3g}, config diff: {keys or 0}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mergekit-venv", type=Path, default=Path("/work/venvs/mk"))
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "moe-parity")
    ns = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    models = {}
    for kind in ("llama", "mistral", "qwen3"):
        if not (ns.work / kind / "chat").is_dir():
            make_dense(ns.work / kind, kind)
        models[kind] = {n: ns.work / kind / n for n in ("base", *PROMPTS)}
    for name, (kind, kwargs, extra, mk_extra) in CASES.items():
        case = ns.work / "cases" / name
        case.mkdir(parents=True, exist_ok=True)
        text = moe_yaml(models[kind], **kwargs)
        (case / "ours.yaml").write_text(text + extra)
        (case / "mk.yaml").write_text(text + (extra if mk_extra is None else mk_extra))
        subprocess.run(
            [
                str(ROOT / ".venv/bin/merge"),
                "moe",
                str(case / "ours.yaml"),
                str(case / "ours"),
                "--force",
                "--quiet",
                "--seed",
                "0",
            ],
            check=True,
            env=env,
        )
        subprocess.run(
            [
                str(ns.mergekit_venv / "bin/mergekit-moe"),
                str(case / "mk.yaml"),
                str(case / "mk"),
                "--device",
                "cpu",
                "--random-seed",
                "0",
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        print(f"{name:28} {compare(case / 'ours', case / 'mk')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
