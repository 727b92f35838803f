"""Router rows of a MoE build: one unit row per expert and layer, made as mergekit makes them.

``hidden`` (and ``hidden_last``): the base model's hidden state entering each layer at the
prompt's last token (prompts are left-padded, each prefixed with the BOS token), averaged
over the expert's prompts; ``hidden_avg``: averaged over all positions first (padding
included, as mergekit does). Hidden states are computed in bfloat16, as mergekit loads the
model. ``cheap_embed``: the mean token embedding of the prompts, the same row for every
layer. The negative prompts' row is subtracted before the row is scaled to unit length.
``random``/``uniform_random``: seeded Gaussian / uniform(-1/sqrt(h), 1/sqrt(h)).

The hidden states are computed layer by layer: one decoder layer's weights are read at a
time and every prompt batch is advanced through it before the next is read, so memory holds
one layer and the prompts' states, never the whole model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mergekit_like.errors import InputError
from mergekit_like.io.catalog import ModelCatalog
from mergekit_like.io.reader import TensorReader
from mergekit_like.moe.config import MoeConfig, MoeExpert


def prompt_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    """The base tokenizer set up as mergekit-moe sets it: left padding, BOS (else EOS) as pad."""
    from mergekit_like.plan.vocab import load_tokenizer

    tok = load_tokenizer(folder, trust_remote_code)
    tok.padding_side = "left"
    tok.pad_token_id = tok.bos_token_id
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise InputError(
                f"{folder}: its tokenizer has neither a BOS nor an EOS token to pad prompts with"
            )
        tok.pad_token = tok.eos_token
    return tok


def tokenize(prompts: list[str], tokenizer: Any) -> dict[str, torch.Tensor]:
    """A left-padded batch of prompts, each prefixed with the BOS token's text."""
    enc = tokenizer(
        [(tokenizer.bos_token or "") + p for p in prompts],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def gate_vectors(
    cfg: MoeConfig, base: ModelCatalog, tokenizer: Any, seed: int = 0, device: str = "cpu"
) -> torch.Tensor:
    """Router rows, shaped (layers, gated experts, hidden): the routed experts, then the
    shared ones that have gates (:meth:`MoeConfig.gated_experts`)."""
    experts = cfg.gated_experts()
    layers, hidden = _int(base, "num_hidden_layers"), _int(base, "hidden_size")
    shape = (layers, len(experts), hidden)
    if cfg.gate_mode == "random":
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if cfg.gate_mode == "uniform_random":
        scale = math.sqrt(1.0 / hidden)
        return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 * scale - scale
    batches: list[dict[str, torch.Tensor]] = []
    for e in experts:
        batches.append(tokenize(list(e.positive_prompts or []), tokenizer))
        if e.negative_prompts:
            batches.append(tokenize(list(e.negative_prompts), tokenizer))
    with TensorReader() as reader:
        if cfg.gate_mode == "cheap_embed":
            rows = cheap_embed_rows(base, reader, batches, layers)
        else:
            rows = hidden_rows(base, reader, batches, cfg.gate_mode == "hidden_avg", device)
    return _combine(experts, iter(rows))


def _combine(experts: list[MoeExpert], rows: Any) -> torch.Tensor:
    """Positive minus negative rows, scaled to unit length, as (layers, experts, hidden)."""
    vecs = []
    for e in experts:
        h = next(rows)
        if e.negative_prompts:
            h -= next(rows)
        h /= h.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        vecs.append(h)
    return torch.stack(vecs, dim=0).permute(1, 0, 2)


def cheap_embed_rows(
    base: ModelCatalog, reader: TensorReader, batches: list[dict[str, torch.Tensor]], layers: int
) -> list[torch.Tensor]:
    """Per batch: the unit mean embedding of its tokens (padding masked), for every layer."""
    name = _embed_name(base)
    embed = reader.read(base.tensors[name], name).float()
    out = []
    for b in batches:
        h = embed[b["input_ids"]]  # equal to mergekit's one_hot @ embed, without the one-hot
        summed = (h * b["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
        unit = summed / summed.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        out.append(unit.repeat(layers, 1))
    return out


class _Stop(Exception):
    """Raised by the last recorder: the decoder's forward has set up every layer's call."""


class _Recorder(torch.nn.Module):
    """Stands in for a decoder layer: records the arguments it is called with, returns its
    input unchanged."""

    def __init__(self, calls: list[Any], last: bool, attention_type: Any) -> None:
        super().__init__()
        self.calls, self.last = calls, last
        if attention_type is not None:
            self.attention_type = attention_type

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls.append((hidden_states, args, kwargs))
        if self.last:
            raise _Stop
        return hidden_states


@torch.no_grad()
def hidden_rows(
    base: ModelCatalog,
    reader: TensorReader,
    batches: list[dict[str, torch.Tensor]],
    average: bool,
    device: str = "cpu",
) -> list[torch.Tensor]:
    """Per batch: the (layers, hidden) mean over prompts of the state entering each layer
    (the last token, or the mean over positions with ``average``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base.path)
    with torch.device("meta"):
        decoder = AutoModelForCausalLM.from_config(config).to(torch.bfloat16).get_decoder()
    prefix = _embed_name(base).removesuffix("embed_tokens.weight")
    _materialize_outside_layers(decoder, config, base, reader, prefix, device)
    states, calls = _record_calls(decoder, batches, device)
    rows: list[list[torch.Tensor]] = [[] for _ in batches]
    n = len(decoder.layers)
    for i in range(n):
        for b, h in enumerate(states):
            rows[b].append(_reduce(h, average))
        if i == n - 1:
            break
        layer = _load_layer(decoder.layers[i], f"{prefix}layers.{i}.", base, reader, device)
        for b in range(len(states)):
            _, args, kwargs = calls[b][i]
            out = layer(states[b], *args, **kwargs)
            states[b] = out[0] if isinstance(out, tuple) else out
        decoder.layers[i] = layer.to("meta")  # frees this layer's weights
    return [torch.stack(r).cpu() for r in rows]


def _reduce(h: torch.Tensor, average: bool) -> torch.Tensor:
    """(batch, seq, hidden) -> (hidden): mergekit's reduction, in its order and dtype."""
    h = h.sum(dim=1) / h.shape[1] if average else h[:, -1, :]
    return h.sum(dim=0) / h.shape[0]


def _record_calls(
    decoder: Any, batches: list[dict[str, torch.Tensor]], device: str
) -> tuple[list[torch.Tensor], list[list[Any]]]:
    """Run the decoder's own forward with recorders for layers: per batch, the embedded
    input and each layer's call arguments (masks, positions, rotary embeddings)."""
    layers = decoder.layers
    states, calls = [], []
    for b in batches:
        mine: list[Any] = []
        originals = list(layers)
        for i, layer in enumerate(originals):
            layers[i] = _Recorder(
                mine, i == len(originals) - 1, getattr(layer, "attention_type", None)
            )
        try:
            decoder(
                input_ids=b["input_ids"].to(device),
                attention_mask=b["attention_mask"].to(device),
                use_cache=False,
            )
        except _Stop:
            pass
        finally:
            for i, layer in enumerate(originals):
                layers[i] = layer
        states.append(mine[0][0])
        calls.append(mine)
    return states, calls


def _materialize_outside_layers(
    decoder: Any, config: Any, base: ModelCatalog, reader: TensorReader, prefix: str, device: str
) -> None:
    """Give the embedding its weights and rebuild meta-device buffers (rotary frequencies)."""
    emb = decoder.get_input_embeddings()
    name = f"{prefix}embed_tokens.weight"
    emb.load_state_dict(
        {"weight": reader.read(base.tensors[name], name, dtype="bfloat16")}, assign=True
    )
    emb.to(device)
    for child_name, child in decoder.named_children():
        if child_name == "layers" or child is emb:
            continue
        if any(buf.is_meta for buf in child.buffers()) and not list(child.parameters()):
            setattr(decoder, child_name, type(child)(config=config).to(device))


def _load_layer(
    layer: torch.nn.Module, prefix: str, base: ModelCatalog, reader: TensorReader, device: str
) -> torch.nn.Module:
    """One decoder layer with the base model's weights, in bfloat16, on ``device``."""
    state = {}
    for key in layer.state_dict():
        info = base.tensors.get(prefix + key)
        if info is None:
            raise InputError(f"{base.ref}: has no tensor {prefix + key}")
        state[key] = reader.read(info, prefix + key, dtype="bfloat16")
    layer.load_state_dict(state, assign=True)
    return layer.to(device)


def _embed_name(base: ModelCatalog) -> str:
    for name in ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight"):
        if name in base.tensors:
            return name
    raise InputError(
        f"{base.ref}: has no model.embed_tokens.weight (the token embeddings the "
        "router rows are made from)"
    )


def _int(base: ModelCatalog, key: str) -> int:
    value = base.config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{base.path / 'config.json'}: {key}: expected a positive integer")
    return value
