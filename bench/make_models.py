"""Llama-shaped ingredient models for the benchmarks, written straight to safetensors.

    .venv/bin/python bench/make_models.py --size tiny      # a few MB, seconds
    .venv/bin/python bench/make_models.py --size 250m      # ~250M parameters per model
    .venv/bin/python bench/make_models.py --size 1b        # Llama-3.2-1B shape, 2.5 GB each

Writes ``bench/work/<size>/models/{base,ft1,ft2,ft3}``: a base of random bfloat16 weights
and fine-tunes that are the base plus small noise, each a Hugging Face folder with
``config.json`` and one ``model.safetensors``. No transformers model is instantiated: the
tensors are produced block by block from a seeded random pool and streamed to the file, so
memory stays small and a 1B family takes about a minute to write.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

WORK = Path(__file__).resolve().parent / "work"
POOL = 1 << 24  # random values in the pool; also the largest block written at once


@dataclass(frozen=True)
class Shape:
    """The dimensions of a Llama-shaped decoder."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tie: bool

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every weight, in the order transformers saves them."""
        h, head_dim = self.hidden, self.hidden // self.heads
        kv = self.kv_heads * head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (self.intermediate, h)),
                (p + "mlp.up_proj.weight", (self.intermediate, h)),
                (p + "mlp.down_proj.weight", (h, self.intermediate)),
                (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,)),
            ]
        out.append(("model.norm.weight", (h,)))
        if not self.tie:
            out.append(("lm_head.weight", (self.vocab, h)))
        return out

    def params(self) -> int:
        return sum(math.prod(s) for _, s in self.tensors())

    def config(self) -> dict[str, object]:
        """A LlamaForCausalLM config.json."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab, "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads, "hidden_act": "silu",
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "tie_word_embeddings": self.tie, "torch_dtype": "bfloat16",
            "bos_token_id": 1, "eos_token_id": 2, "attention_bias": False, "mlp_bias": False,
        }


SIZES = {
    # Llama-3.2-1B: 1.24B parameters, 2.47 GB in bfloat16, a 128256 x 2048 tied embedding
    "1b": Shape(vocab=128256, hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8,
                tie=True),
    "250m": Shape(vocab=32000, hidden=1024, intermediate=4096, layers=14, heads=16, kv_heads=4,
                  tie=True),
    "tiny": Shape(vocab=4096, hidden=256, intermediate=1024, layers=4, heads=8, kv_heads=4,
                  tie=False),
}
MODEL_NAMES = ("base", "ft1", "ft2", "ft3")


def _header(entries: Sequence[tuple[str, tuple[int, ...]]]) -> bytes:
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        nbytes = math.prod(shape) * 2
        meta[name] = {"dtype": "BF16", "shape": list(shape),
                      "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _blocks(numel: int) -> Iterator[int]:
    while numel > 0:
        yield min(numel, POOL)
        numel -= POOL


def write_family(shape: Shape, folder: Path, n_finetunes: int = 3, noise: float = 0.1,
                 seed: int = 0) -> dict[str, Path]:
    """Write a base and ``n_finetunes`` fine-tunes under ``folder``; returns name -> path.

    Base weights are N(0, 0.02) (norm weights 1 + N(0, 0.02)); fine-tune ``i`` adds
    ``noise * 0.02 * N(0, 1)``. Every block takes its values from a 16M-entry Gaussian pool
    at a random offset with a random sign, which is far faster than fresh draws and random
    enough for magnitude trimming and sign election to behave as on real task vectors.
    """
    names = MODEL_NAMES[: 1 + n_finetunes]
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(2 * POOL, generator=gen)
    entries = shape.tensors()
    header = _header(entries)
    paths = {n: folder / n for n in names}
    files = []
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
        f = open(path / "model.safetensors", "wb")  # noqa: SIM115 - closed below
        f.write(header)
        files.append(f)

    def draw(n: int) -> torch.Tensor:
        start = int(torch.randint(0, POOL, (1,), generator=gen))
        sign = 1.0 if torch.rand(1, generator=gen).item() < 0.5 else -1.0
        return pool[start:start + n] * sign

    try:
        for _, tshape in entries:
            is_norm = len(tshape) == 1
            for n in _blocks(math.prod(tshape)):
                base = draw(n).mul_(0.02)
                if is_norm:
                    base.add_(1.0)
                files[0].write(base.to(torch.bfloat16).view(torch.uint8).numpy())
                for f in files[1:]:
                    ft = draw(n).mul_(noise * 0.02).add_(base)
                    f.write(ft.to(torch.bfloat16).view(torch.uint8).numpy())
    finally:
        for f in files:
            f.close()
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Write the ingredient family of ``--size`` (skipped when it already exists)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="1b")
    p.add_argument("--finetunes", type=int, default=3)
    p.add_argument("--root", type=Path, default=None, help="default bench/work/<size>/models")
    p.add_argument("--force", action="store_true", help="rewrite existing models")
    ns = p.parse_args(argv)
    shape = SIZES[ns.size]
    root = ns.root or WORK / ns.size / "models"
    done = all((root / n / "model.safetensors").is_file()
               for n in MODEL_NAMES[: 1 + ns.finetunes])
    if done and not ns.force:
        print(f"{root}: already there (--force rewrites)")
        return 0
    t = time.perf_counter()
    write_family(shape, root, ns.finetunes)
    gb = shape.params() * 2 / 1e9
    print(f"wrote {1 + ns.finetunes} models of {shape.params() / 1e6:.0f}M parameters "
          f"({gb:.2f} GB each) to {root} in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
