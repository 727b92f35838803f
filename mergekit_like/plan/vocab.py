"""The output vocabulary, and where each model's embedding rows go in it (plan time).

With ``tokenizer_source`` (or a ``tokenizer:`` block) set, embedding and lm_head rows are
matched by token, not by id: every model's rows are first mapped into the output vocabulary,
then merged. ``union`` keeps the base tokenizer's ids and appends every other model's tokens
it lacks, in model order. A token a model lacks takes the base model's row, else the mean
of the rows of the models that have it (the only one's row if one has it), else zeros;
``tokens:`` entries override that per token (``force`` applies them to every model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from mergekit_like.errors import InputError, PlanError
from mergekit_like.io.catalog import ModelCatalog, resolve_model
from mergekit_like.recipe.loading import LoadedRecipe
from mergekit_like.recipe.models import TokenizerConfig, TokenSource

SPECIAL_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


@dataclass(frozen=True)
class TokenOverride:
    """A ``tokens:`` entry resolved to rows: output ``row`` gets zeros or ``model``'s row."""

    row: int
    kind: Literal["zero", "model_token"]
    model: int | None
    model_row: int | None
    force: bool


@dataclass(frozen=True)
class VocabPlan:
    """The output vocabulary and, per model, the source row of every output row (-1: none)."""

    size: int
    rows: tuple[tuple[int, ...], ...]  # indexed like Plan.models
    base: int | None  # model whose rows fill tokens other models lack
    overrides: tuple[TokenOverride, ...]
    tokenizer_dir: Path
    added: tuple[tuple[str, bool], ...]  # (token, special) appended to the tokenizer (union)
    special_ids: Mapping[str, int]

    def is_identity(self, model: int) -> bool:
        return self.rows[model] == tuple(range(self.size))


def vocab_rows(config: Mapping[str, Any]) -> int | None:
    """Embedding rows of a model, from its config (or its text_config)."""
    for cfg in (config, config.get("text_config") or {}):
        if isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return None


def load_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model folder, never running (or offering to run) the folder's
    own Python code (``auto_map``) unless ``trust_remote_code``: transformers would else ask
    on stdin, and a piped ``y`` would run it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if not trust_remote_code and _names_code(folder):
            raise InputError(f"{folder}: cannot load its tokenizer: it needs the Python code "
                             "in the folder (auto_map), which runs only with "
                             "--trust-remote-code") from None
        raise InputError(f"{folder}: cannot load its tokenizer "
                         f"({str(exc).splitlines()[0][:120]})") from None


def _names_code(folder: Path) -> bool:
    """Whether the folder's tokenizer or model config points at Python files of its own."""
    for name in ("tokenizer_config.json", "config.json"):
        try:
            cfg = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            return True
    return False


def _source_row(vocab: Mapping[str, int], token: str | None, row: int, limit: int) -> int:
    """The model's row for an output row: by token, or by position for tokenless padding."""
    src = vocab.get(token, -1) if token is not None else row
    return src if src < limit else -1


def plan_vocab(loaded: LoadedRecipe, catalogs: Sequence[ModelCatalog],
               index_of: Mapping[str, int], reference: int,
               base: int | None) -> VocabPlan | None:
    """The vocabulary plan, or None when the recipe sets no tokenizer (rows merge by id)."""
    cfg: TokenizerConfig | None = loaded.recipe.tokenizer_config()
    if cfg is None:
        return None
    loc = ("tokenizer", "source") if loaded.recipe.tokenizer else ("tokenizer_source",)
    src_dir, src_rows = None, None
    if cfg.source in ("union", "base"):
        src_model: int | None = reference
    elif cfg.source in index_of:
        src_model = index_of[cfg.source]
    else:  # a tokenizer from a model that is not an ingredient
        src_model = None
        try:
            src_dir = resolve_model(cfg.source, loaded.path.parent)
            src_tok = load_tokenizer(src_dir, loaded.trust_remote_code)
        except InputError as exc:
            raise PlanError(loaded.problem(loc, exc.problems[0].message)) from None
        try:
            src_rows = vocab_rows(json.loads((src_dir / "config.json").read_text()))
        except (OSError, json.JSONDecodeError):
            src_rows = None
    toks = []
    for i, cat in enumerate(catalogs):
        try:
            toks.append(load_tokenizer(cat.path, loaded.trust_remote_code))
        except InputError as exc:
            raise PlanError(loaded.problem(loc, f"model {catalogs[i].ref!r}: "
                                                f"{exc.problems[0].message}")) from None
    vocabs = [t.get_vocab() for t in toks]
    if src_model is not None:
        src_tok, src_dir = toks[src_model], catalogs[src_model].path
        src_rows = vocab_rows(catalogs[src_model].config)
    src_vocab = src_tok.get_vocab()
    out_tokens: list[str | None] = [None] * max(
        src_rows or 0, max(src_vocab.values(), default=-1) + 1)
    for tok, i in src_vocab.items():
        out_tokens[i] = tok
    added: list[tuple[str, bool]] = []
    if cfg.source == "union":
        known = set(src_vocab)
        for i, vocab in enumerate(vocabs):
            specials = set(toks[i].all_special_tokens)
            for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
                if tok not in known:
                    known.add(tok)
                    added.append((tok, tok in specials))
        first_new = len(src_tok)
        out_tokens = out_tokens[:first_new] + [None] * max(0, first_new - len(out_tokens))
        out_tokens += [t for t, _ in added]
    size = len(out_tokens)
    if cfg.pad_to_multiple_of:
        size = -(-size // cfg.pad_to_multiple_of) * cfg.pad_to_multiple_of
        out_tokens += [None] * (size - len(out_tokens))
    rows = []
    for i, vocab in enumerate(vocabs):
        limit = vocab_rows(catalogs[i].config) or len(toks[i])
        rows.append(tuple(_source_row(vocab, t, r, limit) for r, t in enumerate(out_tokens)))
    position = {t: r for r, t in enumerate(out_tokens) if t is not None}
    overrides = []
    for tok, spec in cfg.tokens.items():
        where = ("tokenizer", "tokens", tok)
        if tok not in position:
            raise PlanError(loaded.problem(where, f"token {tok!r} is not in the output "
                                                  "vocabulary (use source: union to add it)"))
        source = spec.source
        if source is None:
            continue
        if isinstance(source, TokenSource) and source.kind == "zero":
            overrides.append(TokenOverride(position[tok], "zero", None, None, spec.force))
            continue
        model_ref = source.model if isinstance(source, TokenSource) else source
        token = (source.token if isinstance(source, TokenSource) and source.token else tok)
        if model_ref not in index_of:
            raise PlanError(loaded.problem((*where, "source"), f"{model_ref!r} is not one of "
                                                                "the recipe's models"))
        m = index_of[model_ref]
        if token not in vocabs[m]:
            raise PlanError(loaded.problem((*where, "source"),
                                           f"model {model_ref!r} has no token {token!r}"))
        overrides.append(TokenOverride(position[tok], "model_token", m, vocabs[m][token],
                                       spec.force))
    special = {}
    for key in SPECIAL_KEYS:
        name = getattr(src_tok, key.removesuffix("_id"), None)
        if isinstance(name, str) and name in position:
            special[key] = position[name]
    assert src_dir is not None
    return VocabPlan(size, tuple(rows), base, tuple(overrides), src_dir,
                     tuple(added), MappingProxyType(special))
