"""The recipe's ``evaluation:`` and ``soup:`` blocks, and the soup methods' typed options.

Torch-free: ``merge validate`` checks these blocks without loading any heavy library.

Example::

    evaluation:
      task: classification        # or perplexity; or python: package.module:function
      data: demo-out/digits/data.npz
      batch_size: 256
    soup:
      comparison: ">="            # greedy_soup's acceptance test
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EvaluationConfig(_Frozen):
    """How a candidate model is scored on held-out data (val split) and reported (test split)."""

    task: Literal["classification", "perplexity"] | None = Field(
        default=None, description="built-in score: 'classification' (accuracy and loss) or "
        "'perplexity' (causal LMs)")
    python: str | None = Field(
        default=None, description="custom scorer 'package.module:function', called with the "
        "loaded model and the device, and with any of split=, data= (the split's examples, "
        "when data is given), batch_size= and max_examples= that it accepts; runs only with "
        "--allow-code")
    python_loss: str | None = Field(
        default=None, description="learned_soup with a custom scorer: 'package.module:function'"
        " giving the training loss (a tensor to minimise), called like the scorer plus "
        "inputs= and labels= of one batch of the val split (default: the scorer's own value)")
    data: str | None = Field(
        default=None, description=".npz (<split>_inputs or <split>_input_ids, <split>_labels), "
        ".jsonl or .csv (a 'split' field), a folder saved by datasets' save_to_disk (needs "
        "the datasets package), or .txt (perplexity); relative paths are tried from the "
        "working directory, then the recipe's folder")
    test_data: str | None = Field(
        default=None, description="a separate file for the test split (otherwise taken from data)")
    val_split: str = Field("val", description="name of the held-out split that chooses")
    test_split: str | None = Field("test", description="name of the split that is only reported "
                                   "(null: none)")
    metric: Literal["accuracy", "loss"] = Field(
        "accuracy", description="classification: the score that chooses (accuracy or loss)")
    higher_is_better: bool | None = Field(
        default=None, description="default: true for accuracy and custom scorers, false for "
        "loss and perplexity")
    batch_size: int = Field(64, gt=0, description="examples per evaluation batch")
    max_examples: int | None = Field(default=None, gt=0, description="use at most this many "
                                     "examples of each split")
    max_length: int = Field(128, gt=1, description="tokens per text example or perplexity block")
    device: Literal["cpu", "cuda", "auto"] | None = Field(
        default=None, description="evaluation device (default: the merge's --device)")
    threads: int | None = Field(
        default=None, gt=0, description="CPU threads of the evaluation (torch.set_num_threads; "
        "default: torch's own choice)")
    text_field: str = Field("text", description="jsonl/csv/datasets: the text column (tokenized "
                            "with the tokenizer of tokenizer_source or the first model)")
    input_field: str | None = Field(
        default=None, description="the column (npz: <split>_<name> array) holding the model's "
        "input: text, or numbers (token ids as lists, JSON lists or space-separated in csv; "
        "features). Default: text_field, then input_ids (with attention_mask), then inputs")
    label_field: str = Field("label", description="the label column (npz: <split>_<name>, "
                             "else <split>_labels)")

    @model_validator(mode="after")
    def _one_scorer(self) -> EvaluationConfig:
        if (self.task is None) == (self.python is None):
            raise PydanticCustomError(
                "evaluation", "give exactly one of 'task' (classification, perplexity) or "
                "'python' (package.module:function)", {})
        if self.task is not None and self.data is None:
            raise PydanticCustomError(
                "evaluation", "task {task} needs 'data' (a .npz, .jsonl, .csv or .txt file)",
                {"task": repr(self.task)})
        for key in ("python", "python_loss"):
            spec = getattr(self, key)
            module, _, func = (spec or "x:x").partition(":")
            if not module or not func:
                raise PydanticCustomError(
                    "evaluation", "{key} must be 'package.module:function', got {got}",
                    {"key": key, "got": repr(spec)})
        if self.python_loss is not None and self.python is None:
            raise PydanticCustomError(
                "evaluation", "python_loss is the training loss of a custom scorer (python:); "
                "built-in tasks have their own", {})
        return self

    @property
    def higher_better(self) -> bool:
        """Whether a larger score is better (explicit setting, else the metric's default)."""
        if self.higher_is_better is not None:
            return self.higher_is_better
        if self.task == "perplexity" or (self.task == "classification" and self.metric == "loss"):
            return False
        return True


class SoupParams(_Frozen):
    """Options shared by every soup method."""

    memory_budget: str = Field(
        "4GiB", description="running sums larger than this are kept on disk (e.g. 512MiB)")
    plots: bool = Field(True, description="write PNG plots beside the report")


class GreedySoupParams(SoupParams):
    comparison: Literal[">=", ">"] = Field(
        ">=", description="accept an ingredient if the soup's score is >= (the paper's text) "
        "or > (its code) the current soup's")
    order: Literal["score", "given", "random"] = Field(
        "score", description="order in which ingredients are tried")
    seed: int = Field(0, description="seed of order: random")


class LearnedSoupParams(SoupParams):
    granularity: Literal["model", "tensor"] = Field(
        "model", description="one coefficient per ingredient, or one per tensor (by layer)")
    lr: float = Field(0.1, gt=0, description="learning rate of the mixing logits")
    steps: int = Field(50, gt=0, description="gradient steps")
    batch_size: int | None = Field(
        default=None, gt=0, description="examples per step (default: evaluation.batch_size)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the coefficients")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam or plain gradient descent")
    seed: int = Field(0, description="seed of the batch order")


class SubsetSearchParams(SoupParams):
    max_subsets: int = Field(1024, gt=0, description="refuse to score more subsets than this")
    max_size: int | None = Field(default=None, gt=0, description="largest subset size tried")


class WiseFtParams(SoupParams):
    alphas: tuple[float, ...] = Field(
        (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), min_length=1,
        description="mixing weights of the fine-tuned model: (1-alpha)*base + alpha*fine-tuned")


class EnsembleParams(SoupParams):
    """The output ensemble is reported only: it is not one model and nothing is written."""


@dataclass(frozen=True)
class SoupMethod:
    """A registered soup method.

    Attributes:
        name: the recipe's ``merge_method`` value.
        summary: one line for ``merge methods``.
        params: the model of the recipe's ``soup:`` block for this method.
        base: whether ``base_model`` is required (the zero-shot model of WiSE-FT) or unused.
        writes: whether a model is written (the ensemble baseline is reported only).
        min_models: how many ingredients under ``models:`` it needs.
    """

    name: str
    summary: str
    params: type[SoupParams]
    base: Literal["required", "unused"] = "unused"
    writes: bool = True
    min_models: int = 1

    def describe(self) -> str:
        """A few lines for ``merge methods``: summary and ``soup:`` options with defaults."""
        lines = [f"{self.name}: {self.summary}", "    needs an evaluation: block"]
        if self.base == "required":
            lines.append("    needs base_model")
        for field, info in self.params.model_fields.items():
            default = "required" if info.is_required() else f"default {info.default!r}"
            doc = f" - {info.description}" if info.description else ""
            lines.append(f"    soup.{field} ({default}){doc}")
        return "\n".join(lines)


_SOUPS: tuple[SoupMethod, ...] = (
    SoupMethod("greedy_soup", "add ingredients best-first while the held-out score does not "
               "drop (model soups, Recipe 1)", GreedySoupParams),
    SoupMethod("learned_soup", "mixing coefficients learned by gradient descent on the held-out "
               "loss", LearnedSoupParams),
    SoupMethod("subset_search", "score the average of every non-empty subset, write the best",
               SubsetSearchParams),
    SoupMethod("wise_ft", "sweep alpha in (1-alpha)*base + alpha*fine-tuned, write the best",
               WiseFtParams, base="required"),
    SoupMethod("ensemble", "baseline: average the ingredients' logits; reported, not written",
               EnsembleParams, writes=False),
)

SOUP_METHODS: MappingProxyType[str, SoupMethod] = MappingProxyType({m.name: m for m in _SOUPS})


def soup_options_schema() -> dict[str, Any]:
    """JSON Schema of the ``soup:`` block: the options of any soup method."""
    return {"description": "options of the soup method named by merge_method "
            "(`merge methods` lists them)",
            "anyOf": [m.params.model_json_schema() for m in SOUP_METHODS.values()]}


def check_soup_recipe(merge_method: str, evaluation: EvaluationConfig | None,
                      soup: dict[str, Any] | None) -> None:
    """Recipe-level checks: a soup method needs an evaluation block and valid soup options."""
    method = SOUP_METHODS.get(merge_method)
    if method is None:
        if soup:
            raise PydanticCustomError(
                "soup", "soup: options are for soup methods ({known}); merge method {got} "
                "takes parameters: instead",
                {"known": ", ".join(SOUP_METHODS), "got": repr(merge_method)})
        return
    if evaluation is None:
        raise PydanticCustomError(
            "evaluation", "merge method {m} chooses on held-out data: add an evaluation: "
            "block (task: classification | perplexity, or python: package.module:function)",
            {"m": repr(merge_method)})
    try:
        method.params.model_validate(soup or {})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise PydanticCustomError("soup", "soup.{where}: {msg} (merge method {m})",
                                  {"where": where, "msg": msg, "m": repr(merge_method)}) from None
