"""Scoring a model on held-out data: built-in classification and perplexity, or custom code.

An :class:`Evaluator` holds the loaded splits and scores a model (already on the device) on
one of them. Built-in evaluators also give a differentiable loss (for ``learned_soup``);
classification also gives logits (for the ``ensemble`` baseline).

Example::

    ev = build_evaluator(cfg, recipe_dir, model, device="cpu", allow_code=False)
    ev.score(model, "val")   # Score(value=0.97, loss=0.11)
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.errors import MergeError
from mergekit_like.recipe.soups import EvaluationConfig
from mergekit_like.soups.data import Split, load_split

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Score:
    """A model's score on one split: the value that chooses, and the loss when known."""

    value: float
    loss: float | None = None


class Evaluator:
    """Scores models on the val split (which chooses) and the test split (reported only)."""

    def __init__(self, cfg: EvaluationConfig, splits: dict[str, Split], device: str,
                 progress: bool) -> None:
        self.cfg = cfg
        self.splits = splits
        self.device = device
        self.progress = progress
        self.higher_is_better = cfg.higher_better

    @property
    def test_split(self) -> str | None:
        """The name of the test split, or None when there is no test data."""
        name = self.cfg.test_split
        return name if name in self.splits else None

    @property
    def has_logits(self) -> bool:
        """Whether :meth:`logits` works (needed by the ensemble baseline)."""
        return False

    @property
    def has_loss(self) -> bool:
        """Whether :meth:`batch_loss` gives a differentiable loss (needed by learned_soup)."""
        return True

    def at_least(self, a: float, b: float, strict: bool = False) -> bool:
        """``a`` is at least as good as ``b`` (strictly better when ``strict``)."""
        if strict:
            return a > b if self.higher_is_better else a < b
        return a >= b if self.higher_is_better else a <= b

    def best_key(self, value: float) -> float:
        """A sort key: smaller is better, whatever the direction of the score."""
        return -value if self.higher_is_better else value

    def _iter(self, split: str, label: str) -> list[tuple[dict[str, Any], Any]]:
        batches = self.splits[split].batches(self.cfg.batch_size)
        if not self.progress or len(batches) < 2:
            return batches
        from tqdm.auto import tqdm

        return list(tqdm(batches, desc=f"eval {label} [{split}]", leave=False))

    def _to(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) for k, v in inputs.items()}

    def score(self, model: Any, split: str, label: str = "") -> Score:
        """Score ``model`` on ``split`` ('val' or 'test' by the recipe's names)."""
        raise NotImplementedError

    def batch_loss(self, model: Any, inputs: dict[str, Any], labels: Any) -> torch.Tensor:
        """The mean loss of one batch, differentiable with respect to the model's weights."""
        raise NotImplementedError


class ClassificationEvaluator(Evaluator):
    """Accuracy and cross-entropy loss of a ``*ForSequenceClassification`` or
    ``*ForImageClassification`` model."""

    @property
    def has_logits(self) -> bool:
        return True

    def logits(self, model: Any, split: str, label: str = "") -> torch.Tensor:
        """Logits of every example of ``split``, on the CPU, as float32."""
        import torch

        out = []
        with torch.no_grad():
            for inputs, _ in self._iter(split, label):
                out.append(model(**self._to(inputs)).logits.float().cpu())
        return torch.cat(out)

    def score_logits(self, logits: torch.Tensor, split: str) -> Score:
        """Accuracy (or loss, by ``metric``) of given logits against ``split``'s labels."""
        import torch.nn.functional as F

        labels = self.splits[split].labels
        loss = float(F.cross_entropy(logits, labels))
        acc = float((logits.argmax(-1) == labels).float().mean())
        return Score(acc if self.cfg.metric == "accuracy" else loss, loss)

    def score(self, model: Any, split: str, label: str = "") -> Score:
        return self.score_logits(self.logits(model, split, label), split)

    def batch_loss(self, model: Any, inputs: dict[str, Any], labels: Any) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(model(**self._to(inputs)).logits.float(), labels.to(self.device))


class PerplexityEvaluator(Evaluator):
    """Perplexity of a causal LM on blocks of ``max_length`` tokens (lower is better)."""

    def score(self, model: Any, split: str, label: str = "") -> Score:
        import torch

        total, count = 0.0, 0
        with torch.no_grad():
            for inputs, _ in self._iter(split, label):
                ids = inputs["input_ids"]
                n = ids.shape[0] * (ids.shape[1] - 1)
                total += float(self.batch_loss(model, inputs, None)) * n
                count += n
        loss = total / count
        return Score(math.exp(loss), loss)

    def batch_loss(self, model: Any, inputs: dict[str, Any], labels: Any) -> torch.Tensor:
        ids = inputs["input_ids"].to(self.device)
        return model(input_ids=ids, labels=ids).loss.float()


class PythonEvaluator(Evaluator):
    """A custom scorer ``fn(model, device[, split=...])`` named by ``evaluation.python``.

    It returns a number; if it returns a tensor that requires grad, ``learned_soup`` uses
    it as its objective (minimised when lower is better, maximised otherwise).
    """

    def __init__(self, cfg: EvaluationConfig, fn: Callable[..., Any], device: str,
                 progress: bool) -> None:
        super().__init__(cfg, {}, device, progress)
        self.fn = fn
        self.takes_split = "split" in inspect.signature(fn).parameters

    @property
    def test_split(self) -> str | None:
        return self.cfg.test_split

    def call(self, model: Any, split: str) -> Any:
        """Call the custom function (with ``split=`` when it accepts it)."""
        if self.takes_split:
            return self.fn(model, self.device, split=split)
        return self.fn(model, self.device)

    def score(self, model: Any, split: str, label: str = "") -> Score:
        import torch

        with torch.no_grad():
            value = self.call(model, split)
        try:
            return Score(float(value))
        except (TypeError, ValueError):
            raise MergeError(f"evaluation.python: {self.cfg.python} returned {value!r}, "
                             "expected a number") from None

    def batch_loss(self, model: Any, inputs: dict[str, Any], labels: Any) -> torch.Tensor:
        value = self.call(model, self.cfg.val_split)
        if not getattr(value, "requires_grad", False):
            raise MergeError(f"evaluation.python: learned_soup needs {self.cfg.python} to "
                             "return a tensor that depends on the weights (requires grad)")
        return value if not self.higher_is_better else -value


def load_python(spec: str, allow_code: bool, recipe_dir: Path) -> Callable[..., Any]:
    """Import ``package.module:function``; refused unless the user passed ``--allow-code``."""
    if not allow_code:
        raise MergeError(f"evaluation.python: this recipe runs code ({spec}); a shared recipe "
                         "must not run code by surprise: read it, then pass --allow-code")
    module_name, _, func_name = spec.partition(":")
    extra = [p for p in (str(Path.cwd()), str(recipe_dir.resolve())) if p not in sys.path]
    sys.path[:0] = extra
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MergeError(f"evaluation.python: cannot import {module_name!r} ({exc})") from None
    finally:
        for p in extra:
            sys.path.remove(p)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise MergeError(f"evaluation.python: {module_name!r} has no function {func_name!r}")
    return fn


def build_evaluator(cfg: EvaluationConfig, recipe_dir: Path, main_input: str,
                    tokenizer_dir: Path | None, device: str, allow_code: bool,
                    progress: bool = True) -> Evaluator:
    """The evaluator of an ``evaluation:`` block, with its val (and test) splits loaded."""
    if cfg.python is not None:
        return PythonEvaluator(cfg, load_python(cfg.python, allow_code, recipe_dir), device,
                               progress)
    names = [cfg.val_split] + ([cfg.test_split] if cfg.test_split else [])
    splits = {}
    for name in names:
        if cfg.task == "perplexity" and name == cfg.test_split and cfg.data and \
                cfg.test_data is None and Path(cfg.data).suffix.lower() == ".txt":
            continue  # a single .txt file is the val split only
        splits[name] = load_split(cfg, name, recipe_dir, main_input, tokenizer_dir)
    cls = ClassificationEvaluator if cfg.task == "classification" else PerplexityEvaluator
    return cls(cfg, splits, device, progress)
