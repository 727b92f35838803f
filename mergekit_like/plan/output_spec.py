"""The output model's metadata: config.json patched for slices and dtype, tokenizer, template.

Decided at plan time from the ingredients' config files, so ``merge plan`` shows it and
errors (an unknown tokenizer source, a bad chat template) surface before any work starts.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mergekit_like.errors import InputError, PlanError
from mergekit_like.io.catalog import ModelCatalog, resolve_model
from mergekit_like.plan.chat_templates import BUILTIN_TEMPLATES
from mergekit_like.plan.layers import LayerLayout
from mergekit_like.recipe.loading import LoadedRecipe

if TYPE_CHECKING:
    from mergekit_like.plan.sources import ModuleSlices
    from mergekit_like.plan.vocab import VocabPlan


@dataclass(frozen=True)
class OutputSpec:
    """What the output folder holds besides tensors."""

    config: Mapping[str, Any]
    reference: int  # index of the model whose config and generation config are used
    tokenizer_dir: Path | None
    chat_template: str | None
    num_layers: int


def output_spec(
    loaded: LoadedRecipe,
    catalogs: Sequence[ModelCatalog],
    index_of: Mapping[str, int],
    reference: int,
    modules: Sequence[ModuleSlices],
    layouts: Mapping[int, LayerLayout],
    vocab: VocabPlan | None = None,
) -> OutputSpec:
    """Decide the output config, tokenizer folder and chat template."""
    recipe = loaded.recipe
    ref = catalogs[reference]
    if not ref.config:
        raise PlanError(loaded.problem((), f"model {ref.ref!r} has no config.json; the output "
                                       "needs one (it is taken from the base/first model)"))
    config = copy.deepcopy(dict(ref.config))
    main = layouts[reference].main
    num_layers = 0
    for module in modules:
        if module.stack is None:
            continue
        stack = layouts[reference].stacks[module.stack]
        for key in stack.config_keys:
            _set(config, key, module.num_layers)
        if module.stack == main:
            num_layers = module.num_layers
            if stack.config_keys:
                _per_layer_lists(config, stack.config_keys[0], module, catalogs, stack.num_layers)
    out_dtype = recipe.out_dtype or recipe.dtype
    if out_dtype:
        for key in ("torch_dtype", "dtype"):
            if key in config or key == "torch_dtype":
                config[key] = out_dtype
    if vocab is not None:
        _patch_vocab(config, vocab)
        tokenizer_dir: Path | None = vocab.tokenizer_dir
    else:
        tokenizer_dir = _tokenizer_dir(loaded, catalogs, index_of, reference)
    template = _chat_template(loaded, catalogs)
    return OutputSpec(MappingProxyType(config), reference, tokenizer_dir, template, num_layers)


def _set(config: dict[str, Any], dotted: str, value: int) -> None:
    """Set a nested config key given by its dotted path (``text_config.num_hidden_layers``)."""
    *path, key = dotted.split(".")
    for part in path:
        config = config[part]
    config[key] = value


def _per_layer_lists(config: dict[str, Any], count_key: str, module: ModuleSlices,
                     catalogs: Sequence[ModelCatalog], old: int) -> None:
    """Per-layer lists (e.g. ``layer_types``) beside the count follow their source layers."""
    *path, _ = count_key.split(".")
    target = config
    for part in path:
        target = target[part]
    source_layers = [(s.sources[0].model, s.sources[0].start + j)
                     for s in module.slices for j in range(s.length)]
    if old == 0:
        return
    for key, value in list(target.items()):
        if not (isinstance(value, list) and len(value) == old):
            continue
        per_model = {}
        for m, _ in source_layers:
            cfg: Any = catalogs[m].config
            for part in path:
                cfg = cfg.get(part, {}) if isinstance(cfg, Mapping) else {}
            per_model[m] = cfg.get(key) if isinstance(cfg, Mapping) else None
        if all(isinstance(per_model[m], list) and len(per_model[m]) > i
               for m, i in source_layers):
            target[key] = [per_model[m][i] for m, i in source_layers]


def _patch_vocab(config: dict[str, Any], vocab: VocabPlan) -> None:
    """vocab_size and special token ids follow the output tokenizer."""
    target = config["text_config"] if "vocab_size" not in config and isinstance(
        config.get("text_config"), dict) else config
    target["vocab_size"] = vocab.size
    for key, value in vocab.special_ids.items():
        if key in target or key != "unk_token_id":
            target[key] = value


def _tokenizer_dir(loaded: LoadedRecipe, catalogs: Sequence[ModelCatalog],
                   index_of: Mapping[str, int], reference: int) -> Path | None:
    source = loaded.recipe.tokenizer_source
    if source in (None, "base"):
        return catalogs[reference].path
    if source in index_of:
        return catalogs[index_of[source]].path
    try:
        return resolve_model(source, loaded.path.parent)
    except InputError as exc:
        raise PlanError(loaded.problem(("tokenizer_source",), exc.problems[0].message)) from None


def _chat_template(loaded: LoadedRecipe, catalogs: Sequence[ModelCatalog]) -> str | None:
    value = loaded.recipe.chat_template
    if value is None:
        return None
    if value == "auto":
        found = []
        for cat in catalogs:
            try:
                cfg = json.loads((cat.path / "tokenizer_config.json").read_text())
            except (OSError, ValueError, RecursionError):  # missing, not UTF-8, not JSON
                continue
            if not isinstance(cfg, dict):
                continue
            if isinstance(cfg.get("chat_template"), str):
                found.append(cfg["chat_template"].strip())
            elif (cat.path / "chat_template.jinja").is_file():
                found.append((cat.path / "chat_template.jinja").read_text().strip())
        return Counter(found).most_common(1)[0][0] if found else None
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    raise PlanError(loaded.problem(
        ("chat_template",), f"unknown chat template {value!r}: use 'auto', "
        f"{', '.join(repr(k) for k in BUILTIN_TEMPLATES)} or a Jinja template string"))
