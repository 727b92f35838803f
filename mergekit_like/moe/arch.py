"""The output architectures of a MoE build, and which one a config gets (mergekit's rules).

mergekit-moe tries its architectures in order (Mixtral, DeepSeek MoE, Qwen MoE, Qwen3 MoE),
keeps those whose name starts with the config's ``architecture`` and that accept its models,
and prefers Mixtral. We build Mixtral, Qwen2-MoE and Qwen3-MoE; a config that mergekit would
build as DeepSeek MoE is refused in one line. ``qwen2_moe``/``qwen3_moe`` (transformers'
model types) are accepted as ``architecture`` besides mergekit's names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mergekit_like.errors import Loc, RecipeError
from mergekit_like.moe.config import LoadedMoe


@dataclass(frozen=True)
class OutputArch:
    """One output architecture: what it takes, and how its experts are stored."""

    name: str  #: mergekit's name, matched by the config's ``architecture`` prefix
    model_type: str  #: transformers' model type of the output
    class_name: str  #: the transformers class written to config.json
    inputs: tuple[str, ...]  #: model types of the dense models it takes
    shared: int  #: the number of shared experts it needs
    fused: bool  #: experts as one gate_up_proj/down_proj per layer (else one per expert)
    built: bool = True  #: False: mergekit has it, this tool refuses it

    @property
    def shown(self) -> str:
        return {"mixtral": "Mixtral", "qwen2_moe": "Qwen2-MoE", "qwen3_moe": "Qwen3-MoE"}.get(
            self.model_type, self.name
        )


MIXTRAL = OutputArch("Mixtral", "mixtral", "MixtralForCausalLM", ("llama", "mistral"), 0, True)
DEEPSEEK = OutputArch(
    "DeepSeek MoE", "deepseek", "DeepseekForCausalLM", ("llama", "mistral"), 0, True, built=False
)
QWEN2_MOE = OutputArch(
    "Qwen MoE", "qwen2_moe", "Qwen2MoeForCausalLM", ("llama", "mistral", "qwen2"), 1, False
)
QWEN3_MOE = OutputArch("Qwen3 MoE", "qwen3_moe", "Qwen3MoeForCausalLM", ("qwen3",), 0, True)
ALL = (MIXTRAL, DEEPSEEK, QWEN2_MOE, QWEN3_MOE)
BUILT = tuple(a for a in ALL if a.built)


def _named(arch: OutputArch, wanted: str | None) -> bool:
    if wanted is None:
        return True
    w = wanted.lower()
    return arch.name.lower().startswith(w) or w == arch.model_type


def why_not(arch: OutputArch, loaded: LoadedMoe, types: Sequence[tuple[Loc, str]]) -> str | None:
    """Why ``arch`` cannot take this config and these (field, model type) pairs; None if
    it can."""
    cfg = loaded.config
    shared = cfg.shared_experts or []
    if arch is DEEPSEEK:
        if len(shared) > 1 or any(e.positive_prompts or e.negative_prompts for e in shared):
            return "it takes at most one shared expert, without prompts"
    elif len(shared) != arch.shared:
        return f"it takes {'exactly one shared expert' if arch.shared else 'no shared_experts'}"
    if arch is QWEN2_MOE and not cfg.random_gate and not shared[0].positive_prompts:
        return "its shared expert needs positive_prompts (for its gate)"
    kinds = {t for _, t in types}
    if len(kinds) > 1:
        return "every model must have the same architecture"
    if not kinds <= set(arch.inputs):
        return f"it takes {' or '.join(arch.inputs)} models, not {', '.join(sorted(kinds))}"
    return None


def select_arch(loaded: LoadedMoe, types: Sequence[tuple[Loc, str]]) -> OutputArch:
    """The output architecture of a config whose models have these (field, model type)
    pairs, as mergekit picks it; a one-line :class:`RecipeError` when there is none."""
    wanted = loaded.config.architecture
    named = [a for a in ALL if _named(a, wanted)]
    if not named:
        raise RecipeError(
            loaded.problem(
                ("architecture",),
                f"unknown output architecture "
                f"{wanted!r}; expected one of mixtral, qwen2_moe, "
                "qwen3_moe",
            )
        )
    reasons = {a: why_not(a, loaded, types) for a in named}
    fits = [a for a in named if reasons[a] is None]
    chosen = MIXTRAL if MIXTRAL in fits else fits[0] if fits else None
    if chosen is not None and chosen.built:
        return chosen
    if chosen is not None:
        raise RecipeError(
            loaded.problem(
                ("architecture",) if wanted else (),
                (
                    f"mergekit builds these models as {chosen.name}, which this tool does not "
                    "build; build a Mixtral (no shared_experts) or a Qwen2-MoE (one shared expert "
                    "with positive_prompts) instead"
                ),
            )
        )
    raise RecipeError(_no_fit(loaded, types, wanted, {a: r for a, r in reasons.items() if a.built}))


def _no_fit(
    loaded: LoadedMoe,
    types: Sequence[tuple[Loc, str]],
    wanted: str | None,
    reasons: dict[OutputArch, str | None],
) -> object:
    """The one problem that says why no architecture fits, at the field that decides it."""
    base_type = types[0][1]
    accepted = {t for a in BUILT for t in a.inputs}
    for loc, kind in types:
        if kind not in accepted:
            return loaded.problem(
                (*loc,),
                f"a {kind} model; a mixture of experts is built "
                f"from {', '.join(sorted(accepted))} models",
            )
        if kind != base_type:
            return loaded.problem(
                (*loc,),
                f"a {kind} model, but base_model is {base_type}: "
                "every model of a mixture of experts must have the same "
                "architecture",
            )
    why = "; ".join(f"{a.shown}: {r}" for a, r in reasons.items() if r)
    return loaded.problem(
        ("architecture",)
        if wanted
        else ("shared_experts",)
        if loaded.config.shared_experts
        else (),
        f"no output architecture takes this config ({why})",
    )
