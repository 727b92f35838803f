"""Scoring a model on held-out data: built-in classification and perplexity, or custom code.

An :class:`Evaluator` holds the loaded splits and scores a model (already on the device) on
one of them. Built-in evaluators also give a differentiable loss (for ``learned_soup``);
classification also gives logits (for the ``ensemble`` baseline).

Example::

    ev = build_evaluator(cfg, recipe_dir, "input_ids", tok_dir, device="cpu",
                         allow_code=False, model_config=model.config.to_dict())
    with evaluation_threads(cfg.threads):
        ev.score(model, "val")   # Score(value=0.97, loss=0.11, examples=200)
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
    """A model's score on one split: the value that chooses, the loss when known, and the
    number of examples behind it (None when a custom scorer does not say)."""

    value: float
    loss: float | None = None
    examples: int | None = None


@contextmanager
def evaluation_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)`` (``evaluation.threads``), then
    restore torch's setting; ``None`` leaves it alone."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        n = int(labels.numel())
        acc = int((logits.argmax(-1) == labels).sum()) / n  # exact: a count over n
        return Score(acc if self.cfg.metric == "accuracy" else loss, loss, n)

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
        return Score(math.exp(loss), loss, len(self.splits[split]))

    def batch_loss(self, model: Any, inputs: dict[str, Any], labels: Any) -> torch.Tensor:
        ids = inputs["input_ids"].to(self.device)
        return model(input_ids=ids, labels=ids).loss.float()


class PythonEvaluator(Evaluator):
    """A custom scorer ``fn(model, device, ...)`` named by ``evaluation.python``.

    It is passed, by keyword, whichever of ``split``, ``data`` (the split's
    :class:`~mergekit_like.soups.data.Split`, when ``evaluation.data`` is given),
    ``batch_size`` and ``max_examples`` it accepts (all of them if it takes ``**kwargs``).
    It returns a number; if it returns a tensor that requires grad, ``learned_soup`` uses
    it as its objective (minimised when lower is better, maximised otherwise), unless
    ``evaluation.python_loss`` names a separate training loss.
    """

    def __init__(self, cfg: EvaluationConfig, fn: Callable[..., Any], device: str,
                 progress: bool, splits: dict[str, Split] | None = None,
                 loss_fn: Callable[..., Any] | None = None) -> None:
        super().__init__(cfg, splits or {}, device, progress)
        self.fn = fn
        self.loss_fn = loss_fn

    @property
    def test_split(self) -> str | None:
        return self.cfg.test_split

    def _kwargs(self, fn: Callable[..., Any], split: str, **extra: Any) -> dict[str, Any]:
        offered = {"split": split, "batch_size": self.cfg.batch_size,
                   "max_examples": self.cfg.max_examples, **extra}
        if split in self.splits:
            offered["data"] = self.splits[split]
        params = inspect.signature(fn).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return offered
        return {k: v for k, v in offered.items() if k in params}

    def call(self, model: Any, split: str) -> Any:
        """Call the custom function with the keywords it accepts."""
        return self.fn(model, self.device, **self._kwargs(self.fn, split))

    def score(self, model: Any, split: str, label: str = "") -> Score:
        import torch

        with torch.no_grad():
            value = self.call(model, split)
        try:
            n = len(self.splits[split]) if split in self.splits else None
            return Score(float(value), None, n)
        except (TypeError, ValueError):
            raise MergeError(f"evaluation.python: {self.cfg.python} returned {value!r}, "
                             "expected a number") from None

    def batch_loss(self, model: Any, inputs: dict[str, Any], labels: Any) -> torch.Tensor:
        split = self.cfg.val_split
        if self.loss_fn is not None:
            batch = {"inputs": self._to(inputs), "labels": None if labels is None
                     else labels.to(self.device)}
            value = self.loss_fn(model, self.device, **self._kwargs(self.loss_fn, split,
                                                                    **batch))
            if not getattr(value, "requires_grad", False):
                raise MergeError(f"evaluation.python_loss: {self.cfg.python_loss} must return "
                                 "a tensor that depends on the weights (requires grad)")
            return value
        value = self.call(model, split)
        if not getattr(value, "requires_grad", False):
            raise MergeError(f"evaluation.python: learned_soup needs {self.cfg.python} to "
                             "return a tensor that depends on the weights (requires grad), "
                             "or evaluation.python_loss")
        return value if not self.higher_is_better else -value


def load_python(spec: str, allow_code: bool, recipe_dir: Path,
                field: str = "python") -> Callable[..., Any]:
    """Import ``package.module:function``; refused unless the user passed ``--allow-code``."""
    if not allow_code:
        raise MergeError(f"evaluation.{field}: this recipe runs code ({spec}); a shared recipe "
                         "must not run code by surprise: read it, then pass --allow-code")
    module_name, _, func_name = spec.partition(":")
    extra = [p for p in (str(Path.cwd()), str(recipe_dir.resolve())) if p not in sys.path]
    sys.path[:0] = extra
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MergeError(f"evaluation.{field}: cannot import {module_name!r} ({exc})") from None
    finally:
        for p in extra:
            sys.path.remove(p)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise MergeError(f"evaluation.{field}: {module_name!r} has no function {func_name!r}")
    return fn


def build_evaluator(cfg: EvaluationConfig, recipe_dir: Path, main_input: str,
                    tokenizer_dir: Path | None, device: str, allow_code: bool,
                    progress: bool = True, model_config: Mapping[str, Any] | None = None
                    ) -> Evaluator:
    """The evaluator of an ``evaluation:`` block, with its val (and test) splits loaded;
    ``model_config`` (the model's config.json) bounds the sequence length."""
    names = [cfg.val_split] + ([cfg.test_split] if cfg.test_split else [])
    if cfg.python is not None:
        fn = load_python(cfg.python, allow_code, recipe_dir)
        loss_fn = None if cfg.python_loss is None else load_python(
            cfg.python_loss, allow_code, recipe_dir, "python_loss")
        own = cfg.data is None or Path(cfg.data).suffix.lower() == ".txt"  # it reads its own
        splits = {} if own else {
            n: load_split(cfg, n, recipe_dir, main_input, tokenizer_dir, model_config)
            for n in names}
        return PythonEvaluator(cfg, fn, device, progress, splits, loss_fn)
    splits = {}
    for name in names:
        if cfg.task == "perplexity" and name == cfg.test_split and cfg.data and \
                cfg.test_data is None and Path(cfg.data).suffix.lower() == ".txt":
            continue  # a single .txt file is the val split only
        splits[name] = load_split(cfg, name, recipe_dir, main_input, tokenizer_dir,
                                  model_config)
    cls = ClassificationEvaluator if cfg.task == "classification" else PerplexityEvaluator
    return cls(cfg, splits, device, progress)
