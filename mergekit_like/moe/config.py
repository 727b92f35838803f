"""mergekit-moe's config format: the fields users write, validated with their file and line.

A mergekit-moe config names a ``base_model`` (attention, embeddings and norms come from it)
and ``experts`` whose MLPs become the experts of each layer; ``gate_mode`` says how the
router rows are made. This module is torch-free: ``merge`` recognises and checks a config
before any heavy import.

Example::

    loaded = load_moe_config(Path("moe.yaml"))
    loaded.config.gate_mode  # 'hidden'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mergekit_like.errors import Loc, Problem, RecipeError
from mergekit_like.recipe.loading import apply_overrides, check_plain, locate, parse_yaml
from mergekit_like.recipe.yaml_lines import read_recipe_text

#: top-level keys that mark a mergekit-moe config (mergekit's own rule of thumb)
MOE_KEYS = ("experts", "gate_mode")

GateMode = Literal["hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random"]
DTYPES = ("float32", "float16", "bfloat16", "float64")


class MoeExpert(BaseModel):
    """One model whose MLP becomes an expert (or the shared expert) of every layer."""

    model_config = ConfigDict(extra="forbid")

    source_model: str = Field(min_length=1, description="a local folder or a hub id")
    positive_prompts: list[str] | None = Field(
        None, description="prompts that should route to this expert"
    )
    negative_prompts: list[str] | None = Field(
        None, description="prompts that should not: their hidden states are subtracted"
    )
    noise_scale: float | None = Field(
        None, description="add seeded Gaussian noise of this scale to the expert's MLP"
    )
    residual_scale: float | None = Field(
        None, description="multiply the expert's down_proj (its residual output) by this"
    )


class MoeConfig(BaseModel):
    """A mergekit-moe config: build a mixture of experts from dense models."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(min_length=1, description="attention, embeddings and norms")
    experts: list[MoeExpert] = Field(min_length=1)
    gate_mode: GateMode = Field(
        "hidden",
        description="router rows from hidden states on the prompts (last token; "
        "hidden_avg: mean over tokens), cheap_embed (token embeddings), or random",
    )
    dtype: str | None = Field(None, description="output dtype (default: the base model's)")
    experts_per_token: int = Field(2, description="experts each token is routed to")
    shared_experts: list[MoeExpert] | None = Field(
        None, description="Qwen2-MoE's shared expert (exactly one)"
    )
    architecture: str | None = Field(
        None,
        description="output: mixtral, qwen2_moe or qwen3_moe (default: chosen from "
        "the models, as mergekit does)",
    )

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; expected one of {', '.join(DTYPES)}")
        return name

    def gated_experts(self) -> list[MoeExpert]:
        """The experts that need router rows: the routed ones, then the shared ones when
        they have prompts or the gate is random (mergekit's rule)."""
        shared = self.shared_experts or []
        if shared and (any(e.positive_prompts for e in shared) or self.random_gate):
            return [*self.experts, *shared]
        return list(self.experts)

    @property
    def random_gate(self) -> bool:
        return self.gate_mode in ("random", "uniform_random")


@dataclass(frozen=True)
class LoadedMoe:
    """A validated MoE config, its source text, and the line each field came from."""

    config: MoeConfig
    path: Path
    text: str
    lines: MappingProxyType[Loc, int]
    overridden: frozenset[Loc] = frozenset()

    def problem(self, loc: Loc, message: str) -> Problem:
        """A :class:`Problem` at ``loc`` with the file and line of its nearest known part."""
        return locate(loc, message, self.path, self.lines, self.overridden)


def is_moe_data(data: Any) -> bool:
    """Whether parsed YAML is a mergekit-moe config (it has ``experts`` or ``gate_mode``)."""
    return isinstance(data, dict) and any(k in data for k in MOE_KEYS)


def is_moe_file(path: Path) -> bool:
    """Whether ``path`` holds a mergekit-moe config (False when it cannot be read or parsed:
    the recipe loader then reports the problem)."""
    try:
        data, _ = parse_yaml(read_recipe_text(path), path)
    except (RecipeError, OSError):
        return False
    return is_moe_data(data)


def load_moe_config(
    path: Path, overrides: Sequence[str] = (), allow_all_same: bool = False
) -> LoadedMoe:
    """Read, override and validate a mergekit-moe config, then check it as mergekit does
    (enough experts for ``experts_per_token``, prompts for every expert unless random...)."""
    text = read_recipe_text(path)
    data, lines = parse_yaml(text, path)
    data, touched = apply_overrides(data, overrides)
    if not isinstance(data, dict):
        raise RecipeError(
            Problem(
                "a mergekit-moe config is a YAML mapping (base_model: ..., experts: ...)",
                (),
                path.name,
                1,
            )
        )
    check_plain(data, path, lines, touched)
    try:
        config = MoeConfig.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(
            [_problem(err, path, lines, touched) for err in exc.errors(include_url=False)]
        ) from None
    loaded = LoadedMoe(config, path, text, MappingProxyType(lines), touched)
    problems = config_problems(loaded, allow_all_same)
    if problems:
        raise RecipeError(problems)
    return loaded


def _problem(err: Any, path: Path, lines: dict[Loc, int], touched: frozenset[Loc]) -> Problem:
    loc = tuple(
        p
        for p in err["loc"]
        if not (isinstance(p, str) and p.startswith(("function-", "list[", "literal[")))
    )
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key of a mergekit-moe config"
    elif err["type"] == "missing":
        msg = "required field is missing"
    return locate(loc, msg, path, lines, touched)


def config_problems(loaded: LoadedMoe, allow_all_same: bool = False) -> list[Problem]:
    """mergekit-moe's checks of a config, located at the field they concern."""
    cfg, out = loaded.config, []
    if cfg.experts_per_token < 1:
        out.append(loaded.problem(("experts_per_token",), "must be 1 or more"))
    elif len(cfg.experts) < cfg.experts_per_token:
        out.append(
            loaded.problem(
                ("experts_per_token",),
                f"{cfg.experts_per_token} experts per token, but only {len(cfg.experts)} "
                f"expert{'s' if len(cfg.experts) != 1 else ''}",
            )
        )
    if cfg.random_gate:
        return out
    for i, e in enumerate(cfg.experts):
        if not e.positive_prompts:
            out.append(
                loaded.problem(
                    ("experts", i, "positive_prompts"),
                    "required with "
                    f"gate_mode {cfg.gate_mode} (prompts that should route "
                    "to this expert)",
                )
            )
    shared = cfg.shared_experts or []
    if len({bool(e.positive_prompts) for e in shared}) > 1:
        out.append(
            loaded.problem(("shared_experts",), "give prompts to every shared expert or to none")
        )
    if out or len(cfg.experts) < 2:
        return out

    def prompts(e: MoeExpert) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(e.positive_prompts or ()), tuple(e.negative_prompts or ())

    if all(prompts(e) == prompts(cfg.experts[0]) for e in cfg.experts[1:]):
        out.append(
            loaded.problem(
                ("experts",),
                "every expert has the same prompts, so the router cannot tell them apart",
            )
        )
    if not allow_all_same and all(
        e.source_model == cfg.experts[0].source_model for e in cfg.experts[1:]
    ):
        out.append(
            loaded.problem(
                ("experts",),
                "every expert is the same model: the result "
                "computes more for the same output; pass "
                "--i-understand-this-is-not-useful-without-training to "
                "build it anyway (e.g. to train it)",
            )
        )
    return out
