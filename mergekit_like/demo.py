"""Tiny ingredient models built locally (no downloads), for the demo and the tests.

``make_family`` writes a base model and fine-tunes of it (the base plus seeded noise, as if
each had been trained on a different task), with a word-level tokenizer, as Hugging Face
model folders. ``python -m mergekit_like.demo`` builds them and runs a TIES merge.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ARCHS = ("llama", "gpt2")
VOCAB = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(60)]


def tiny_config(arch: str, layers: int = 2, hidden: int = 32, vocab: int = len(VOCAB),
                tie: bool = False) -> Any:
    """A transformers config of a tiny model (2-4 layers, hidden 32-64)."""
    from transformers import GPT2Config, LlamaConfig

    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=64,
                           tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
                           pad_token_id=3)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4,
                          n_positions=64, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def save_tokenizer(folder: Path, vocab: Sequence[str] = tuple(VOCAB),
                   specials: Sequence[str] = ()) -> None:
    """A word-level tokenizer over ``vocab`` (default :data:`VOCAB`), in Hugging Face format.

    ``specials`` are vocabulary entries registered as additional special tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    if specials:
        fast.add_special_tokens({"additional_special_tokens": list(specials)})
    fast.save_pretrained(folder)


def make_model(folder: Path, config: Any, seed: int, *, base: Path | None = None,
               noise: float = 0.02, shard_size: str | None = None, fmt: str = "safetensors",
               tokenizer: bool = True) -> Path:
    """Save a model: seeded random init, or ``base``'s weights plus seeded noise.

    ``fmt`` is 'safetensors' or 'bin' (a pytorch_model.bin); ``shard_size`` (e.g. '20KB')
    splits safetensors into shards with an index.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if base is not None:
        ref = AutoModelForCausalLM.from_pretrained(base)
        model.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise)
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        model.config.save_pretrained(folder)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, folder / "pytorch_model.bin")
    else:
        kwargs = {"max_shard_size": shard_size} if shard_size else {}
        model.save_pretrained(folder, **kwargs)
    if tokenizer:
        save_tokenizer(folder)
    return folder


def make_family(root: Path, arch: str = "llama", names: Sequence[str] = ("math", "code", "chat"),
                layers: int = 2, hidden: int = 32, seed: int = 0, **kwargs: Any) -> dict[str, Path]:
    """A base model and one fine-tune per name, under ``root``; returns name -> folder."""
    config = tiny_config(arch, layers=layers, hidden=hidden)
    out = {"base": make_model(root / "base", config, seed, noise=0.0)}
    for i, name in enumerate(names):
        out[name] = make_model(root / name, config, seed + 1 + i, base=out["base"], **kwargs)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Build the demo models and merge them with recipes/demo/ties.yaml."""
    parser = argparse.ArgumentParser(prog="python -m mergekit_like.demo",
                                     description="Build tiny models locally and merge them.")
    parser.add_argument("--root", type=Path, default=Path("demo-out"))
    ns = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from mergekit_like.cli import main as merge_main

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    print(f"building demo models in {ns.root / 'models'} ...")
    make_family(ns.root / "models", layers=4, hidden=64)
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "ties.yaml"
    out = ns.root / "merged-ties"
    models = ns.root / "models"
    overrides = [f"base_model={models / 'base'}"] + [
        f"models.{i}.model={models / name}" for i, name in enumerate(("math", "code", "chat"))]
    code = merge_main([str(recipe), str(out), "--force", *overrides])
    if code:
        return code
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    ids = tok("w1 w2 w3 w4", return_tensors="pt").input_ids
    print(f"\nnext-token loss of each model on the prompt {tok.decode(ids[0])!r}:")
    for folder in [*(ns.root / "models" / n for n in ("base", "math", "code", "chat")), out]:
        model = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        print(f"  {folder.name:<12} {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
