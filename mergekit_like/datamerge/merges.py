"""The three data-driven merges over the ingredients: each yields ``(index, tensor)`` pairs,
one merged float32 tensor per index of :attr:`Ingredients.tensors`, which the runner
writes and loads into the live model at once (RegMean++ relies on that: it reads the
merged earlier layers back from the live model).

Statistics are computed one ingredient at a time in the one live model and stored in the
:class:`~mergekit_like.datamerge.cache.StatsCache`; the merge then reads, per tensor, that
tensor of each ingredient and of each statistics file one ingredient at a time, large
tensors in row ranges (:mod:`~mergekit_like.datamerge.stream`), so memory holds one model,
its statistics while they are computed, and one merged tensor with its running sums.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mergekit_like.datamerge.adamerging import (
    Held,
    ReadTaskTensors,
    TaskTensors,
    Workspace,
    coefficient_table,
    compact,
    learn_coefficients,
    merged_tensor,
)
from mergekit_like.datamerge.cache import StatsCache, StatsFile, data_hash, model_hash, stats_key
from mergekit_like.datamerge.solve import regmean_stream
from mergekit_like.datamerge.statistics import (
    Examples,
    fisher_diagonal,
    fisher_groups,
    fisher_shapes,
    gram_groups,
    gram_matrices,
    gram_shapes,
    linear_modules,
)
from mergekit_like.datamerge.stream import fisher_tensor, mean_tensor
from mergekit_like.recipe.datamerge import AdaMergingParams, FisherParams, RegMeanParams
from mergekit_like.soups.ingredients import Ingredients

if TYPE_CHECKING:
    import torch

Merged = Iterator[tuple[int, "torch.Tensor"]]


@dataclass
class MergeContext:
    """What a data-driven merge works with; ``details`` collects what the report shows."""

    ingredients: Ingredients
    examples: Examples
    params: Any
    cache: StatsCache
    scales: list[float]
    progress: Any = None  # items -> items with a progress bar, or None
    details: dict[str, Any] = field(default_factory=dict)

    def names_by_ptr(self) -> dict[int, str]:
        """The live model's tensor ``data_ptr`` -> checkpoint tensor name."""
        ing = self.ingredients
        return {ing.targets[t.name].data_ptr(): t.name for t in ing.tensors}

    def model_path(self, k: int) -> Any:
        ref = self.ingredients.tensors[0].inputs[k]
        return self.ingredients.plan.models[ref.model].path

    def load(self, k: int, indices: list[int] | None = None) -> None:
        """Load ingredient ``k`` (only tensors ``indices`` when given) into the live model."""
        import torch

        ing = self.ingredients
        with torch.no_grad():
            for i in range(len(ing.tensors)) if indices is None else indices:
                ing.targets[ing.tensors[i].name].copy_(ing.read(k, i))

    def statistics(
        self,
        kind: str,
        settings: dict[str, Any],
        compute: Any,
        shapes: Mapping[str, list[int]] | None = None,
    ) -> list[Any]:
        """Each ingredient's statistics file (computed by ``compute()`` on the loaded
        model on a miss: a dict of tensors, or with ``shapes`` the parts of one, each a
        dict); records hit or miss per ingredient in ``details``."""
        data = data_hash(self.examples.inputs, self.examples.labels)
        settings = {
            **settings,
            "task": self.examples.task,
            "class": type(self.ingredients.model).__name__,
        }
        paths, record = [], []
        for k in range(self.ingredients.count):
            key = stats_key(kind, model_hash(self.model_path(k)), data, settings)
            hit = self.cache.has(key)
            if not hit:
                self.load(k)
                if shapes is None:
                    self.cache.store(key, compute(), consume=True)
                else:
                    self.cache.store_parts(key, shapes, compute())
            paths.append(self.cache.path(key))
            status = ("hit" if hit else "miss") if self.cache.persistent else "off"
            record.append({"model": self.ingredients.refs[k], "key": key, "cache": status})
        self.details["statistics"] = record
        return paths


def fisher(ctx: MergeContext) -> Merged:
    """Fisher merging: statistics per ingredient, then the Fisher-weighted mean per tensor."""
    p: FisherParams = ctx.params
    names = ctx.names_by_ptr()
    seed = p.seed if p.sample_labels else None
    settings = {"n": len(ctx.examples), "sample_labels": p.sample_labels, "seed": p.seed}
    model = ctx.ingredients.model
    if p.hold == "disk":  # the same bytes as one pass, so the same cache entries
        layers = {t.name: t.layer for t in ctx.ingredients.tensors}
        paths = ctx.statistics(
            "fisher",
            settings,
            lambda: fisher_groups(model, ctx.examples, names, layers, seed),
            fisher_shapes(model, names),
        )
    else:
        paths = ctx.statistics(
            "fisher", settings, lambda: fisher_diagonal(model, ctx.examples, names, seed)
        )
    plain = []
    files = [StatsFile(path) for path in paths]
    for i, t in enumerate(ctx.ingredients.tensors):
        merged, fallback = fisher_tensor(ctx.ingredients, i, files, ctx.scales, p.epsilon)
        if fallback:
            plain.append(t.name)
        yield i, merged
    ctx.details["plain_mean_tensors"] = plain


def _embedding_ptrs(model: Any) -> set[int]:
    import torch

    return {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}


def regmean(ctx: MergeContext) -> Merged:
    """RegMean: Gram matrices per ingredient, then each linear layer's closed form."""
    p: RegMeanParams = ctx.params
    if p.plusplus:
        yield from regmean_plusplus(ctx)
        return
    model = ctx.ingredients.model
    modules = linear_modules(model, ctx.names_by_ptr(), _embedding_ptrs(model))
    settings = {"n": len(ctx.examples), "batch": ctx.examples.batch_size}
    layers = {t.name: t.layer for t in ctx.ingredients.tensors}
    paths = ctx.statistics(
        "gram",
        settings,
        lambda: gram_groups(model, ctx.examples, modules, layers),
        gram_shapes(modules),
    )
    ctx.details["linear_layers"] = len(modules)
    files = [StatsFile(path) for path in paths]
    ing = ctx.ingredients
    for i, t in enumerate(ing.tensors):
        if t.name in modules and all(t.name in f for f in files):
            yield (
                i,
                regmean_stream(
                    len(files),
                    lambda k, i=i: ing.read(k, i),
                    lambda k, n=t.name: files[k].get(n),
                    p.alpha,
                    modules[t.name][1],
                ),
            )
        else:
            yield i, mean_tensor(ing, i, None)


def _stages(ctx: MergeContext, linear: set[str]) -> list[list[int]]:
    """Tensor indices in merge order for RegMean++: non-layer tensors that are not linear
    (embeddings, final norm), then each layer, then the non-layer linears (heads)."""
    tensors = ctx.ingredients.tensors
    layers = sorted({t.layer for t in tensors if t.layer is not None})
    first = [i for i, t in enumerate(tensors) if t.layer is None and t.name not in linear]
    last = [i for i, t in enumerate(tensors) if t.layer is None and t.name in linear]
    middle = [[i for i, t in enumerate(tensors) if t.layer == n] for n in layers]
    return [first, *middle, last]


def regmean_plusplus(ctx: MergeContext) -> Merged:
    """RegMean++: layer by layer, each ingredient's inputs to a layer are taken through the
    already merged earlier layers (with that ingredient's own layer). These statistics
    depend on the merge itself and are not cached."""
    p: RegMeanParams = ctx.params
    ing, model = ctx.ingredients, ctx.ingredients.model
    modules = linear_modules(model, ctx.names_by_ptr(), _embedding_ptrs(model))
    ctx.details["statistics"] = [{"model": r, "cache": "not cached (RegMean++)"} for r in ing.refs]
    ctx.details["linear_layers"] = len(modules)
    for stage in _stages(ctx, set(modules)):
        here = {
            ing.tensors[i].name: modules[ing.tensors[i].name]
            for i in stage
            if ing.tensors[i].name in modules
        }
        grams = []
        for k in range(ing.count) if here else []:
            ctx.load(k, stage)
            grams.append(gram_matrices(model, ctx.examples, here))
        for i in stage:
            name = ing.tensors[i].name
            if name in here and all(name in g for g in grams):
                yield (
                    i,
                    regmean_stream(
                        len(grams),
                        lambda k, i=i: ing.read(k, i),
                        lambda k, n=name, gs=grams: gs[k][n],
                        p.alpha,
                        here[name][1],
                    ),
                )
            else:
                yield i, mean_tensor(ing, i, None)
        del grams


def adamerging(ctx: MergeContext) -> Merged:
    """AdaMerging: ingredient 0 is the base; coefficients learned on unlabeled inputs."""
    p: AdaMergingParams = ctx.params
    ing = ctx.ingredients
    tensors = [_held(ing, i, p.hold) for i in range(len(ing.tensors))]
    own = [ing.model_names[t.name] for t in ing.tensors]
    learned = learn_coefficients(ing.model, own, tensors, ctx.examples, p, ctx.progress)
    ctx.details["coefficients"] = coefficient_table(
        learned.coefficients, ing.refs[1:], [t.name for t in ing.tensors]
    )
    ctx.details["entropy_history"] = learned.entropy
    space = Workspace(tensors)
    queue = deque(tensors)  # each tensor's values are let go once it is merged
    del tensors
    for i in range(len(queue)):
        yield i, merged_tensor(queue.popleft(), learned.coefficients, i, space)


def _held(ing: Ingredients, i: int, hold: str) -> Held:
    """Tensor ``i``'s base and ingredient values for AdaMerging, kept or read again."""
    if hold == "disk":
        shape = tuple(ing.tensors[i].shape)
        return ReadTaskTensors(shape, ing.count - 1, lambda k: ing.read(k, i))
    return TaskTensors(
        compact(ing.read(0, i)), tuple(compact(ing.read(k, i)) for k in range(1, ing.count))
    )


MERGES = {"fisher": fisher, "regmean": regmean, "adamerging": adamerging}
