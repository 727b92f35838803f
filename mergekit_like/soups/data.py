"""Evaluation data: the val and test splits named by the recipe's ``evaluation:`` block.

Formats (the file's suffix decides):

- ``.npz``: arrays ``<split>_inputs`` and ``<split>_labels`` (or ``inputs`` and ``labels`` in
  a per-split file); any other ``<split>_<name>`` array is passed to the model as ``<name>``
  (e.g. ``attention_mask``). Inputs go to the model's main input (``pixel_values``,
  ``input_ids``).
- ``.npz`` token ids: ``<split>_input_ids`` (and ``<split>_attention_mask``), or the
  array named by ``input_field``; labels ``<split>_<label_field>`` or ``<split>_labels``.
- ``.jsonl`` / ``.csv`` / a ``datasets`` folder (``save_to_disk``): one example a row, with
  a text column (tokenized with the model's tokenizer) or numbers (token ids, ``input_ids``
  as tokenizers store them, features; see :mod:`mergekit_like.soups.data_rows`), a label
  column and an optional ``split`` column (a dataset dict: its splits).
- ``.txt`` (perplexity): the whole text, cut into blocks of ``max_length`` tokens.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.errors import InputError
from mergekit_like.recipe.soups import EvaluationConfig
from mergekit_like.soups import data_rows

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Split:
    """One split: model inputs (first dimension = examples) and labels (None for LM data)."""

    name: str
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, size: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor | None]]:
        """Consecutive batches of at most ``size`` examples."""
        out = []
        for i in range(0, len(self), size):
            inputs = {k: v[i:i + size] for k, v in self.inputs.items()}
            out.append((inputs, None if self.labels is None else self.labels[i:i + size]))
        return out


def find_data(ref: str, recipe_dir: Path) -> Path:
    """A data path as written, else relative to the recipe's folder."""
    for cand in (Path(ref).expanduser(), recipe_dir / ref):
        if cand.is_file() or data_rows.is_dataset_folder(cand):
            return cand
    raise InputError(f"evaluation.data: file {ref!r} not found (tried the working directory "
                     f"and {recipe_dir})")


def load_split(cfg: EvaluationConfig, split: str, recipe_dir: Path, main_input: str,
               tokenizer_dir: Path | None, model_config: Mapping[str, Any] | None = None
               ) -> Split:
    """Load one split for ``cfg.task``; ``main_input`` is the model's main input name and
    ``model_config`` its config (its positions bound the sequence length)."""
    use_test_file = cfg.test_data is not None and split == cfg.test_split
    ref = cfg.test_data if use_test_file else cfg.data
    assert ref is not None
    path = find_data(ref, recipe_dir)
    suffix = path.suffix.lower()
    positions = data_rows.model_positions(model_config)
    if cfg.task == "perplexity":
        _check_max_length(cfg, positions)
        texts = _texts(path, suffix, cfg, None if use_test_file else split)
        return _limit(_lm_blocks(texts, cfg, tokenizer_dir, split), cfg.max_examples)
    if suffix == ".npz":
        result = _npz(path, split, main_input, cfg)
    elif suffix in (".jsonl", ".csv") or data_rows.is_dataset_folder(path):
        rows = _rows(path, suffix, None if use_test_file else split)
        pad = (model_config or {}).get("pad_token_id")
        result = _classification_rows(rows, cfg, split, main_input, tokenizer_dir, path,
                                      positions, pad if isinstance(pad, int) else 0)
    else:
        raise InputError(f"evaluation.data: {path.name}: expected a .npz, .jsonl or .csv file "
                         "or a datasets folder for classification")
    _check_length(result, positions, path)
    return _limit(result, cfg.max_examples)


def _check_max_length(cfg: EvaluationConfig, positions: tuple[str, int] | None) -> None:
    if positions is not None and cfg.max_length > positions[1]:
        raise InputError(f"evaluation.max_length: {cfg.max_length} tokens, but the model takes "
                         f"at most {positions[1]} ({positions[0]} in its config.json)")


def _check_length(split: Split, positions: tuple[str, int] | None, path: Path) -> None:
    ids = split.inputs.get("input_ids")
    if positions is not None and ids is not None and ids.dim() == 2 \
            and ids.shape[1] > positions[1]:
        raise InputError(f"evaluation.data: {path.name}: {split.name} examples of "
                         f"{ids.shape[1]} tokens, but the model takes at most {positions[1]} "
                         f"({positions[0]} in its config.json)")


def _limit(split: Split, n: int | None) -> Split:
    if n is None or n >= len(split):
        return split
    labels = None if split.labels is None else split.labels[:n]
    return Split(split.name, {k: v[:n] for k, v in split.inputs.items()}, labels)


def _npz(path: Path, split: str, main_input: str, cfg: EvaluationConfig) -> Split:
    import torch

    arrays = _npz_arrays(path)
    names = [cfg.input_field] if cfg.input_field else ["inputs", "input_ids"]
    field = next((n for n in names if f"{split}_{n}" in arrays),
                 next((n for n in names if n in arrays), names[0]))
    prefix = f"{split}_" if f"{split}_{field}" in arrays else ""
    label = next((n for n in (cfg.label_field, "labels") if f"{prefix}{n}" in arrays), "labels")
    if f"{prefix}{field}" not in arrays or f"{prefix}{label}" not in arrays:
        raise InputError(f"evaluation.data: {path.name} has no arrays '{split}_{field}' and "
                         f"'{split}_{label}' (found: {', '.join(sorted(arrays))})")
    target = "input_ids" if field == "input_ids" else main_input
    inputs = {target: torch.from_numpy(arrays[f"{prefix}{field}"])}
    if target == "input_ids":
        inputs["input_ids"] = inputs["input_ids"].long()
    other_splits = {k.split("_", 1)[0] for k in arrays if k.endswith(f"_{field}")}
    for key, value in arrays.items():
        head, _, name = key.partition("_")
        if prefix and head == split and name not in (field, label):
            inputs[name] = torch.from_numpy(value)
        elif not prefix and head not in other_splits and key not in (field, label):
            inputs[key] = torch.from_numpy(value)
    return Split(split, inputs, torch.from_numpy(arrays[f"{prefix}{label}"]).long())


def _npz_arrays(path: Path) -> dict[str, Any]:
    """Every array of a .npz file; pickled objects are refused, never loaded."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:  # object arrays need pickle
        reason = "holds pickled objects, which are not loaded" if "pickle" in str(exc) \
            else str(exc).splitlines()[0][:80]
        raise InputError(f"evaluation.data: {path.name}: {reason}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"evaluation.data: {path.name}: not a readable .npz file "
                         f"({str(exc).splitlines()[0][:80]})") from None
    return arrays


def _rows(path: Path, suffix: str, split: str | None) -> list[dict[str, Any]]:
    if data_rows.is_dataset_folder(path):
        return data_rows.dataset_rows(path, split)
    try:
        if suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        else:
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"evaluation.data: {path.name}: unreadable ({exc})") from None
    if split is not None and rows and "split" in rows[0]:
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise InputError(f"evaluation.data: {path.name} has no rows with split {split!r}")
    return rows


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json",
                    "spiece.model", "sentencepiece.bpe.model")


def _tokenizer(tokenizer_dir: Path | None, field: str = "text_field") -> Any:
    if tokenizer_dir is None or not any((tokenizer_dir / n).is_file()
                                        for n in _TOKENIZER_FILES):
        where = "" if tokenizer_dir is None else f" ({tokenizer_dir} has no tokenizer files)"
        raise InputError(f"evaluation.{field}: the data is text, but the model has no "
                         f"tokenizer{where}: set tokenizer_source to a model with one, or give "
                         "token ids (input_ids)")
    from mergekit_like.plan.vocab import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)  # an evaluation never runs a folder's own code
    if len(tok) == 0:
        raise InputError(f"evaluation.{field}: the tokenizer of {tokenizer_dir} is empty")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _classification_rows(rows: list[dict[str, Any]], cfg: EvaluationConfig, split: str,
                         main_input: str, tokenizer_dir: Path | None, path: Path,
                         positions: tuple[str, int] | None, pad_id: int) -> Split:
    import torch

    if not rows or cfg.label_field not in rows[0]:
        raise InputError(f"evaluation.data: {path.name}: rows need a {cfg.label_field!r} field "
                         "(evaluation.label_field)")
    labels = torch.tensor([int(r[cfg.label_field]) for r in rows])
    column = data_rows.input_column(rows, cfg, path)
    text = column == cfg.text_field and cfg.input_field is None
    values = None if text else data_rows.number_rows(rows, column, path)
    if values is None:  # text
        field = "input_field" if cfg.input_field else "text_field"
        tok = _tokenizer(tokenizer_dir, field)
        _check_max_length(cfg, positions)
        enc = tok([str(r[column]) for r in rows], padding="max_length", truncation=True,
                  max_length=cfg.max_length, return_tensors="pt")
        return Split(split, {k: v for k, v in enc.items() if k != "token_type_ids"}, labels)
    if column == "input_ids" or (main_input == "input_ids" and all(
            isinstance(x, int) for v in values for x in v)):
        return Split(split, data_rows.token_inputs(rows, column, values, pad_id), labels)
    tensor = torch.tensor(values)
    return Split(split, {main_input: tensor if tensor.is_floating_point()
                         or main_input != "pixel_values" else tensor.float()}, labels)


def _texts(path: Path, suffix: str, cfg: EvaluationConfig, split: str | None) -> list[str]:
    if suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if suffix in (".jsonl", ".csv"):
        return [str(r[cfg.text_field]) for r in _rows(path, suffix, split)
                if cfg.text_field in r]
    raise InputError(f"evaluation.data: {path.name}: expected .txt, .jsonl or .csv text")


def _lm_blocks(texts: list[str], cfg: EvaluationConfig, tokenizer_dir: Path | None,
               split: str) -> Split:
    import torch

    tok = _tokenizer(tokenizer_dir)
    ids: list[int] = []
    for text in texts:
        ids.extend(tok(text, add_special_tokens=False)["input_ids"])
    n = len(ids) // cfg.max_length
    if n == 0:
        raise InputError(f"evaluation.data: the {split} text has {len(ids)} tokens, fewer than "
                         f"one block of evaluation.max_length={cfg.max_length}")
    blocks = torch.tensor(ids[: n * cfg.max_length]).view(n, cfg.max_length)
    return Split(split, {"input_ids": blocks}, None)
