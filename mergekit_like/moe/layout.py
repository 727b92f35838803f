"""What a MoE build writes, from headers alone: the output config and every output tensor
with the source pieces it is copied from.

The output's tensor names and shapes come from the transformers model of the output config,
built on the ``meta`` device (no memory): each name is then sourced from the base model
(attention, embeddings, norms), from the experts' MLPs (stacked into one tensor per layer
for Mixtral and Qwen3-MoE, one tensor per expert for Qwen2-MoE, as mergekit writes them),
from the shared expert's MLP, or from the router rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mergekit_like.errors import Loc, PlanError
from mergekit_like.io.catalog import ModelCatalog
from mergekit_like.moe.arch import MIXTRAL, QWEN2_MOE, OutputArch
from mergekit_like.moe.config import LoadedMoe, MoeExpert

ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_EXPERTS = re.compile(r"^(.*\.mlp)\.experts\.(gate_up_proj|down_proj)$")
_BIAS = re.compile(r"\.self_attn\.[qkv]_proj\.bias$")


@dataclass(frozen=True)
class Piece:
    """One source tensor copied into (a consecutive part of) an output tensor."""

    model: int  #: index into the build's catalogs (0 is the base model)
    name: str  #: the source tensor's name
    expert: MoeExpert | None = None  #: whose noise_scale/residual_scale apply
    residual: bool = False  #: a down_proj: residual_scale applies


@dataclass(frozen=True)
class OutTensor:
    """One output tensor: its name, safetensors dtype, shape, and where it comes from."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...] = ()
    router: tuple[str, int] | None = None  #: ('experts' | 'shared', layer)
    zeros: bool = False  #: Qwen2-MoE's attention bias for a base without one


def output_config(arch: OutputArch, base_config: Any, loaded: LoadedMoe, dtype: Any) -> Any:
    """The transformers config of the output, made from the base's as mergekit makes it."""
    import transformers as tf

    cfg, n = loaded.config, len(loaded.config.experts)
    if arch is MIXTRAL:
        if not isinstance(base_config, tf.MistralConfig):
            mistral = tf.MistralConfig(**base_config.to_dict())
            mistral.sliding_window = None
            mistral.max_position_embeddings = base_config.max_position_embeddings
            base_config = mistral
        out = tf.MixtralConfig(**base_config.to_dict())
        out.num_local_experts = n
        out.sliding_window = None
    elif arch is QWEN2_MOE:
        out = tf.Qwen2MoeConfig(**base_config.to_dict())
        out.num_experts = n
        out.decoder_sparse_step = 1
        out.norm_topk_prob = True
        out.sliding_window = None
        out.use_sliding_window = False
        out.shared_expert_intermediate_size = out.intermediate_size
        out.moe_intermediate_size = out.intermediate_size
    else:
        out = tf.Qwen3MoeConfig(**base_config.to_dict())
        out.num_experts = n
        out.decoder_sparse_step = 1
        out.norm_topk_prob = True
        out.moe_intermediate_size = out.intermediate_size
    out.architectures = [arch.class_name]
    out.num_experts_per_tok = cfg.experts_per_token
    if dtype is not None:
        out.dtype = dtype
    return out


def expected_tensors(out_config: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of the output model (built on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(out_config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def model_locs(loaded: LoadedMoe) -> list[Loc]:
    """The config field of each catalog of a build: base, experts, then shared experts."""
    cfg = loaded.config
    return [
        ("base_model",),
        *(("experts", i, "source_model") for i in range(len(cfg.experts))),
        *(("shared_experts", i, "source_model") for i in range(len(cfg.shared_experts or []))),
    ]


def plan_tensors(
    arch: OutputArch,
    out_config: Any,
    loaded: LoadedMoe,
    cats: list[ModelCatalog],
    out_dtype: str | None,
    router_dtype: str,
) -> list[OutTensor]:
    """Every output tensor with its sources, checked against the sources' headers."""
    planner = _Planner(arch, loaded, cats, out_dtype)
    tied = bool(getattr(out_config, "tie_word_embeddings", False))
    base, n_experts = cats[0], len(loaded.config.experts)
    for name, shape in expected_tensors(out_config).items():
        if name.endswith(".mlp.gate.weight"):
            planner.add(name, shape, router_dtype, router=("experts", _layer(name)))
        elif name.endswith(".mlp.shared_expert_gate.weight"):
            planner.add(name, shape, router_dtype, router=("shared", _layer(name)))
        elif m := _EXPERTS.match(name):
            planner.experts(name, shape, *m.groups())
        elif ".mlp.shared_expert." in name:
            src = name.replace(".mlp.shared_expert.", ".mlp.")
            shared = (loaded.config.shared_experts or [])[0]
            planner.take(name, shape, [Piece(1 + n_experts, src, shared, "down_proj" in name)])
        elif name in base.tensors:
            planner.take(name, shape, [Piece(0, name)])
        elif name == "lm_head.weight" and tied:
            continue
        elif arch is QWEN2_MOE and _BIAS.search(name):  # zeros, as mergekit writes them
            planner.add(name, shape, base.tensors[_weight(name)].dtype, zeros=True)
        else:
            raise PlanError(
                loaded.problem(
                    ("base_model",), f"has no tensor {name} (the {arch.shown} output needs it)"
                )
            )
    return planner.out


class _Planner:
    """Collects output tensors, checking each source piece's presence and shape."""

    def __init__(
        self, arch: OutputArch, loaded: LoadedMoe, cats: list[ModelCatalog], out_dtype: str | None
    ) -> None:
        self.arch, self.loaded, self.cats, self.out_dtype = arch, loaded, cats, out_dtype
        self.locs = model_locs(loaded)
        self.out: list[OutTensor] = []

    def add(self, name: str, shape: tuple[int, ...], dtype: str, **kw: Any) -> None:
        self.out.append(OutTensor(name, self.out_dtype or dtype, shape, **kw))

    def experts(self, name: str, shape: tuple[int, ...], prefix: str, kind: str) -> None:
        """The experts' MLPs: one stacked tensor (fused), or one per expert and projection
        (mergekit's Qwen2-MoE layout, which transformers stacks when loading)."""
        projs = ("gate_proj", "up_proj") if kind == "gate_up_proj" else ("down_proj",)
        experts = list(enumerate(self.loaded.config.experts))
        if self.arch.fused:
            one = (shape[1] // len(projs), shape[2])
            self.take(
                name,
                shape,
                [
                    Piece(1 + e, f"{prefix}.{p}.weight", ex, p == "down_proj")
                    for e, ex in experts
                    for p in projs
                ],
                one,
            )
            return
        for e, ex in experts:
            for p in projs:
                one = (shape[1] // len(projs), shape[2])
                piece = Piece(1 + e, f"{prefix}.{p}.weight", ex, p == "down_proj")
                self.take(f"{prefix}.experts.{e}.{p}.weight", one, [piece])

    def take(
        self,
        name: str,
        shape: tuple[int, ...],
        pieces: list[Piece],
        piece_shape: tuple[int, ...] | None = None,
    ) -> None:
        """Output ``name`` copied from ``pieces``, each of ``piece_shape`` (default
        ``shape``), laid end to end."""
        want = piece_shape or shape
        for p in pieces:
            info = self.cats[p.model].tensors.get(p.name)
            if info is None:
                raise PlanError(
                    self.loaded.problem(
                        self.locs[p.model],
                        f"has no tensor {p.name} (the {self.arch.shown} output needs it for "
                        f"{name})",
                    )
                )
            if tuple(info.shape) != tuple(want):
                raise PlanError(
                    self.loaded.problem(
                        self.locs[p.model],
                        f"{p.name} has shape {list(info.shape)}, the {self.arch.shown} output "
                        f"needs {list(want)} (from the base model's config)",
                    )
                )
        dtype = self.cats[pieces[0].model].tensors[pieces[0].name].dtype
        self.add(name, shape, dtype, pieces=tuple(pieces))


def _layer(name: str) -> int:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def _weight(bias_name: str) -> str:
    return bias_name.removesuffix(".bias") + ".weight"
