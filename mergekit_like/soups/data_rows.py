"""Classification examples one a row (.jsonl, .csv, a ``datasets`` folder): which column is
the input, token ids as tokenizers store them, and the model's limits.

The input column is ``input_field`` when set, else ``text_field``, else ``input_ids`` (with
``attention_mask`` and ``token_type_ids`` beside it when present), else ``inputs``. A text
column is tokenized; a column of numbers is passed as is: token ids (lists, JSON lists or
space-separated in a .csv) of different lengths are padded with the config's
``pad_token_id`` and masked.

>>> parse_numbers("[2, 5, 3]"), parse_numbers("2 5 3"), parse_numbers("a b")
([2, 5, 3], [2, 5, 3], None)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.errors import InputError
from mergekit_like.recipe.soups import EvaluationConfig

if TYPE_CHECKING:
    import torch

POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")
_COMPANIONS = ("attention_mask", "token_type_ids")


def model_positions(config: Mapping[str, Any] | None) -> tuple[str, int] | None:
    """(config key, value) of the longest sequence the model takes, if its config says."""
    for key in POSITION_KEYS:
        value = (config or {}).get(key)
        if isinstance(value, int) and value > 0:
            return key, value
    return None


def parse_numbers(value: Any) -> list[Any] | None:
    """A list of numbers from a list, a JSON list or space-separated text; None if not."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        parsed = (
            json.loads(text)
            if text.startswith("[")
            else [float(x) if any(c in x for c in ".eE") else int(x) for x in text.split()]
        )
    except ValueError:
        return None
    return parsed if isinstance(parsed, list) and parsed else None


def input_column(rows: list[dict[str, Any]], cfg: EvaluationConfig, path: Path) -> str:
    """The name of the input column (see the module docstring)."""
    first = rows[0]
    if cfg.input_field is not None:
        if cfg.input_field not in first:
            raise InputError(
                f"evaluation.input_field: {path.name} has no column "
                f"{cfg.input_field!r} (found: {', '.join(map(str, first))})"
            )
        return cfg.input_field
    for name in (cfg.text_field, "input_ids", "inputs"):
        if name in first:
            return name
    raise InputError(
        f"evaluation.data: {path.name}: rows need a {cfg.text_field!r} field "
        "(evaluation.text_field), 'input_ids' or 'inputs' lists, or name the "
        "column with evaluation.input_field"
    )


def number_rows(rows: list[dict[str, Any]], column: str, path: Path) -> list[list[Any]] | None:
    """Every row's ``column`` as a list of numbers, or None when the column is text."""
    out = []
    for i, r in enumerate(rows):
        values = parse_numbers(r[column])
        if values is None:
            if i == 0:
                return None
            raise InputError(
                f"evaluation.data: {path.name}: row {i + 1}: {column!r} is not a "
                "list of numbers, as the earlier rows' are"
            )
        out.append(values)
    return out


def stack_ids(values: list[list[Any]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows padded (right) with ``pad_id`` to the longest, and their mask."""
    import torch

    width = max(len(v) for v in values)
    ids = torch.full((len(values), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(values), width), dtype=torch.long)
    for i, v in enumerate(values):
        ids[i, : len(v)] = torch.tensor([int(x) for x in v], dtype=torch.long)
        mask[i, : len(v)] = 1
    return ids, mask


def token_inputs(
    rows: list[dict[str, Any]], column: str, values: list[list[Any]], pad_id: int
) -> dict[str, torch.Tensor]:
    """input_ids (and the mask and token types: given, else built) of token-id rows."""
    ids, mask = stack_ids(values, pad_id)
    inputs = {"input_ids": ids, "attention_mask": mask}
    for name in _COMPANIONS:
        if column == "input_ids" and name in rows[0]:
            given = [parse_numbers(r[name]) or [] for r in rows]
            inputs[name] = stack_ids(given, 0)[0][:, : ids.shape[1]]
    return inputs


def dataset_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    """The rows of a folder saved with ``datasets``' ``save_to_disk`` (a dataset dict: the
    split by name; one dataset: filtered by its 'split' column, when it has one)."""
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"evaluation.data: {path} is a datasets folder; reading it needs the "
            "datasets package (pip install datasets)"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise InputError(
            f"evaluation.data: {path}: not a readable datasets folder "
            f"({str(exc).splitlines()[0][:100]})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            split = next(iter(loaded))
        if split not in loaded:
            raise InputError(
                f"evaluation.data: {path} has no split {split!r} (found: {', '.join(loaded)})"
            )
        return list(loaded[split].to_list())
    rows = list(loaded.to_list())
    if split is not None and rows and "split" in rows[0]:
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise InputError(f"evaluation.data: {path} has no rows with split {split!r}")
    return rows


def is_dataset_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk``."""
    return path.is_dir() and any(
        (path / n).is_file() for n in ("dataset_dict.json", "state.json", "dataset_info.json")
    )
