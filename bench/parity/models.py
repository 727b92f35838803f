"""Tiny ingredient model families for the mergekit parity check, built with transformers.

A family is one architecture and dtype: a base (random init from a fixed seed) and three
fine-tunes, each the base plus its own random perturbation. Each member is written in its
own shard layout (one file, or shards with an index split at different places), so both
tools read every layout. The bfloat16 families perturb by small multiples of a step, which
leaves many task-vector entries of equal magnitude (ties at the trim cut-offs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

MEMBERS = ("base", "ft1", "ft2", "ft3")


@dataclass(frozen=True)
class Family:
    """One architecture, size and dtype, with the shard count of each member."""

    name: str
    arch: str  # llama | qwen2 | mistral
    dtype: str  # float32 | bfloat16
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie: bool
    shards: tuple[int, int, int, int]  # per member; 1 = one file, no index

    @property
    def layout(self) -> str:
        return "/".join("1" if n == 1 else f"{n}i" for n in self.shards)


FAMILIES: tuple[Family, ...] = (
    Family("llama-f32", "llama", "float32", 64, 192, 4, 4, 2, 320, False, (1, 2, 3, 1)),
    Family("qwen2-bf16", "qwen2", "bfloat16", 32, 96, 3, 4, 2, 256, True, (2, 1, 4, 1)),
    Family("mistral-f32", "mistral", "float32", 128, 256, 2, 8, 4, 256, False, (3, 1, 1, 2)),
    Family("llama-bf16", "llama", "bfloat16", 64, 192, 4, 4, 2, 320, False, (1, 3, 2, 1)),
)


def _config(fam: Family):
    import transformers

    common = dict(
        vocab_size=fam.vocab,
        hidden_size=fam.hidden,
        intermediate_size=fam.intermediate,
        num_hidden_layers=fam.layers,
        num_attention_heads=fam.heads,
        num_key_value_heads=fam.kv_heads,
        tie_word_embeddings=fam.tie,
        max_position_embeddings=256,
    )
    cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }[fam.arch]
    return cls(**common)


def _base_state(fam: Family) -> tuple[object, dict[str, torch.Tensor]]:
    import transformers

    config = _config(fam)
    cls = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "mistral": transformers.MistralForCausalLM,
    }[fam.arch]
    torch.manual_seed(1234)
    model = cls(config)
    model.config.architectures = [cls.__name__]
    state = {}
    gen = torch.Generator().manual_seed(99)
    for name, t in model.state_dict().items():
        if fam.tie and name == "lm_head.weight":
            continue
        t = t.detach().clone().float()
        if t.ndim == 1:  # norms are ones and biases zeros at init: give them spread
            t = t + 0.05 * torch.randn(t.shape, generator=gen)
        state[name] = t
    return model.config, state


def _perturb(fam: Family, state: dict[str, torch.Tensor], member: int) -> dict[str, torch.Tensor]:
    """A fine-tune: base + noise; bfloat16 ones by multiples of a step (equal magnitudes)."""
    gen = torch.Generator().manual_seed(1000 + member)
    out = {}
    for name, t in state.items():
        scale = t.abs().mean().clamp(min=1e-3)
        if fam.dtype == "bfloat16":
            steps = torch.randint(-3, 4, t.shape, generator=gen).float()
            delta = steps * (scale * 0.05)
        else:
            delta = torch.randn(t.shape, generator=gen) * (scale * 0.1)
            if member == 3:  # a sparse fine-tune: a third of its entries move
                delta = delta * (torch.rand(t.shape, generator=gen) < 0.35)
        out[name] = t + delta
    return out


def _write(folder: Path, config, state: dict[str, torch.Tensor], dtype: str, shards: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    config.dtype = dtype
    config.save_pretrained(folder)
    tensors = {k: v.to(torch_dtype).contiguous() for k, v in state.items()}
    names = list(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    # contiguous runs of names; the split points differ with the shard count
    bounds = [round(i * len(names) / shards) for i in range(shards + 1)]
    weight_map: dict[str, str] = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[bounds[i] : bounds[i + 1]]}
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def build_family(fam: Family, root: Path) -> dict[str, Path]:
    """Write the family's four members under ``root/<family>/`` (reused when present)."""
    base_dir = root / fam.name
    paths = {m: base_dir / m for m in MEMBERS}
    stamp = base_dir / "done.json"
    if stamp.exists() and json.loads(stamp.read_text()) == fam.__dict__ | {
        "shards": list(fam.shards)
    }:
        return paths
    config, base = _base_state(fam)
    states = [base] + [_perturb(fam, base, i) for i in (1, 2, 3)]
    for member, state, shards in zip(MEMBERS, states, fam.shards, strict=False):
        _write(paths[member], config, state, fam.dtype, shards)
    stamp.write_text(json.dumps(fam.__dict__ | {"shards": list(fam.shards)}))
    return paths
