"""Tiny dense models for MoE builds: a base and fine-tunes of it, per architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mergekit_like.demo import VOCAB, make_model

#: what each expert's prompts are about (word-level tokens of the tiny tokenizer)
PROMPTS = {"math": "w1 w2 w3 w4 w5", "code": "w40 w41 w42 w43", "chat": "w20 w21 w22"}


def dense_config(kind: str, layers: int = 2, hidden: int = 32) -> Any:
    """A transformers config of a tiny dense causal LM of ``kind``."""
    import transformers as tf

    common = dict(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    classes = {
        "llama": tf.LlamaConfig,
        "mistral": tf.MistralConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "gpt2": None,
    }
    if kind == "gpt2":
        return tf.GPT2Config(
            vocab_size=len(VOCAB),
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
        )
    if kind == "qwen3":
        common["head_dim"] = hidden // 4
    return classes[kind](**common)


def make_dense(
    root: Path, kind: str, names: tuple[str, ...] = ("math", "code", "chat"), noise: float = 0.02
) -> dict[str, Path]:
    config = dense_config(kind)
    out = {"base": make_model(root / "base", config, 0, noise=0.0)}
    for i, name in enumerate(names):
        out[name] = make_model(root / name, config, 1 + i, base=out["base"], noise=noise)
    return out


@pytest.fixture(scope="session")
def dense(tmp_path_factory: pytest.TempPathFactory):
    """``dense(kind)``: base + math/code/chat fine-tunes of that architecture, made once."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the tests read stderr: one line per error
    disable_progress_bars()
    made: dict[str, dict[str, Path]] = {}

    def get(kind: str) -> dict[str, Path]:
        if kind not in made:
            made[kind] = make_dense(tmp_path_factory.mktemp(f"moe-{kind}"), kind)
        return made[kind]

    return get


def moe_yaml(
    models: dict[str, Path],
    experts: tuple[str, ...] = ("math", "code"),
    gate_mode: str = "hidden",
    shared: str | None = None,
    extra: str = "",
    negative: bool = False,
) -> str:
    """A mergekit-moe config over ``models`` with one prompt per expert."""
    lines = [f"base_model: {models['base']}", f"gate_mode: {gate_mode}", "experts:"]
    for name in experts:
        lines += [f"  - source_model: {models[name]}", f'    positive_prompts: ["{PROMPTS[name]}"]']
        if negative:
            other = next(n for n in PROMPTS if n != name)
            lines.append(f'    negative_prompts: ["{PROMPTS[other]}", "w9 w8"]')
    if shared:
        lines += [
            "shared_experts:",
            f"  - source_model: {models[shared]}",
            f'    positive_prompts: ["{PROMPTS[shared]}"]',
        ]
    return "\n".join(lines) + "\n" + extra
