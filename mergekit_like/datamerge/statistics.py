"""Per-model statistics of the data-driven merges, gathered on a live model.

- :func:`fisher_diagonal`: the diagonal Fisher information, the mean over N examples of the
  squared gradient of each example's log-likelihood (Matena & Raffel). Gradients are
  squared and summed as each parameter's gradient is complete (a post-accumulate hook), so
  no second copy of the gradients is held. :func:`fisher_groups` takes them a group of
  whole layers at a time (one pass over the examples each, only that group's parameters
  asking for gradients), so that only one group's sums are held before they are written.
- :func:`gram_matrices`: ``X^T X`` of the inputs of each linear layer (Jin et al.'s RegMean),
  recorded by forward pre-hooks; rows are tokens (padding, by ``attention_mask``, excluded),
  and the sum is divided by the number of rows. :func:`gram_groups` takes them a group of
  whole layers at a time (one pass over the examples each), so that only one group's
  matrices are held before they are written.

Both return tensors keyed by the checkpoint's tensor names (``names`` maps a live tensor's
``data_ptr`` to its checkpoint name).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


STATS_SHARE = 4
""":func:`gram_groups` and :func:`fisher_groups` hold at most ``1 / STATS_SHARE`` of the
model's float32 bytes of statistics at once (or one layer's, if more)."""


@dataclass(frozen=True)
class Examples:
    """The examples statistics are computed on: model inputs, labels (classification; None
    for causal LM blocks, whose labels are the next tokens), the task and batch size."""

    inputs: Mapping[str, torch.Tensor]
    labels: torch.Tensor | None
    task: str  # 'classification' or 'perplexity'
    batch_size: int

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, size: int | None = None) -> Iterator[tuple[dict[str, Any], Any]]:
        """Consecutive batches of ``size`` (default :attr:`batch_size`) examples."""
        size = size or self.batch_size
        for i in range(0, len(self), size):
            labels = None if self.labels is None else self.labels[i : i + size]
            yield {k: v[i : i + size] for k, v in self.inputs.items()}, labels


def log_likelihood(
    model: Any,
    inputs: Mapping[str, torch.Tensor],
    labels: Any,
    task: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Each example's log-likelihood (shape [batch]) of its labels, or of labels sampled
    from the model's own predictions when ``generator`` is given."""
    import torch

    logits = model(**inputs).logits.float()
    if task == "perplexity":  # next-token targets: the data's, or sampled per position
        logits = logits[:, :-1]
        targets = inputs["input_ids"][:, 1:]
    else:
        targets = labels
    logp = logits.log_softmax(-1)
    if generator is not None:
        flat = logp.detach().reshape(-1, logp.shape[-1]).exp()
        targets = torch.multinomial(flat, 1, generator=generator).reshape(logp.shape[:-1])
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked if task != "perplexity" else picked.sum(-1)


def fisher_diagonal(
    model: Any,
    examples: Examples,
    names: Mapping[int, str],
    sample_seed: int | None = None,
    only: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Mean over the examples of the squared per-example log-likelihood gradient, for every
    parameter that gets a gradient (keyed by checkpoint name; others are left out); with
    ``only``, for those of these checkpoint names alone (the others ask for no gradient
    during the pass, so backward stops at the earliest of them)."""
    if only is not None:
        with gradients_only(model, lambda p: names.get(p.data_ptr()) in only):
            return fisher_diagonal(model, examples, names, sample_seed)
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    sums = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params}
    seen: set[int] = set()

    def accumulate(p: torch.Tensor) -> None:
        if p.grad is not None:
            sums[id(p)].add_(p.grad.float().square())
            seen.add(id(p))
        p.grad = None

    hooks = [p.register_post_accumulate_grad_hook(accumulate) for p in params]
    gen = None if sample_seed is None else torch.Generator().manual_seed(sample_seed)
    count = 0
    try:
        for inputs, labels in examples.batches(1):  # one example per backward pass
            ll = log_likelihood(model, inputs, labels, examples.task, gen)
            ll.sum().backward()
            count += 1
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    out = {}
    for p in params:
        name = names.get(p.data_ptr())
        if name is not None and id(p) in seen:
            out[name] = sums[id(p)].div_(count)
    return out


@contextmanager
def gradients_only(model: Any, wanted: Callable[[Any], bool]) -> Iterator[None]:
    """Within: only the parameters for which ``wanted`` holds (among those that asked for
    one) ask for gradients; every flag is restored on leaving."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, asked in flags:
            p.requires_grad_(asked and wanted(p))
        yield
    finally:
        for p, asked in flags:
            p.requires_grad_(asked)


def fisher_shapes(model: Any, names: Mapping[int, str]) -> dict[str, list[int]]:
    """The shape of each named parameter that asks for a gradient (its Fisher's shape)."""
    return {
        names[p.data_ptr()]: list(p.shape)
        for p in model.parameters()
        if p.requires_grad and p.data_ptr() in names
    }


def fisher_groups(
    model: Any,
    examples: Examples,
    names: Mapping[int, str],
    layers: Mapping[str, int | None],
    sample_seed: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`fisher_diagonal` a group of consecutive whole layers at a time (``layers``: a
    tensor's layer index; None, outside the layers, goes last), each group's sums at most
    1 / :data:`STATS_SHARE` of the model's float32 bytes (or one layer's, if more). Each
    entry is the bytes one pass for every parameter gives; the sampled labels, drawn again
    from the same seed in every pass, are the same labels."""
    shapes = fisher_shapes(model, names)
    sizes = {n: 4 * math.prod(s) for n, s in shapes.items()}
    budget = sum(4 * p.numel() for p in model.parameters()) // STATS_SHARE
    for group in grouped(sizes, layers, budget):
        yield fisher_diagonal(model, examples, names, sample_seed, set(group))


def linear_modules(
    model: Any, names: Mapping[int, str], exclude: Collection[int] = ()
) -> dict[str, tuple[Any, bool]]:
    """Checkpoint weight name -> (module, transposed) for each linear layer of ``model``:
    ``nn.Linear`` (weight [out, in]) and transformers' ``Conv1D`` (weight [in, out],
    ``transposed``). Weights whose ``data_ptr`` is in ``exclude`` (tied embeddings) are
    left out."""
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it today
        Conv1D = ()  # noqa: N806
    out = {}
    for module in model.modules():
        linear = isinstance(module, torch.nn.Linear)
        if not (linear or isinstance(module, Conv1D)):
            continue
        ptr = module.weight.data_ptr()
        name = names.get(ptr)
        if name is not None and ptr not in exclude:
            out[name] = (module, not linear)
    return out


def gram_matrices(
    model: Any, examples: Examples, modules: Mapping[str, tuple[Any, bool]], share: bool = True
) -> dict[str, torch.Tensor]:
    """``X^T X / rows`` of each named module's inputs over the examples (float32).

    Modules fed one input tensor in every batch (q/k/v projections, gate/up) get one
    matrix, computed once a batch and the same tensor object under each name (``share``);
    their bytes are those of a sum of their own. Should a module's input partner change
    between batches, the sums are taken again without sharing."""
    import torch

    grams: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    owner: dict[str, str] = {}  # a module -> the module whose matrix it shares
    batch: dict[int, tuple[torch.Tensor, str]] = {}  # this batch: id(input) -> (it, first)
    mask: list[torch.Tensor | None] = [None]
    broken = [False]

    def hook_for(name: str) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x_in = args[0]
            hit = batch.get(id(x_in))
            first = hit[1] if hit is not None and hit[0] is x_in else None
            if first is None:
                batch[id(x_in)] = (x_in, name)
            if share and first is not None and owner.get(name, first if name not in grams
                                                          else None) == first:
                if name not in grams:
                    grams[name], owner[name] = grams[first], first
                rows[name] = rows[first]
                return
            if name in owner:  # its partner changed: start again without sharing
                broken[0] = True
                return
            x = x_in.detach().float()
            m = mask[0]
            if m is not None and x.dim() == 3 and tuple(m.shape) == tuple(x.shape[:2]):
                x = x[m.bool()]
            x = x.reshape(-1, x.shape[-1])
            g = x.T @ x
            grams[name] = grams[name].add_(g) if name in grams else g
            rows[name] = rows.get(name, 0) + x.shape[0]

        return hook

    hooks = [m.register_forward_pre_hook(hook_for(n)) for n, (m, _) in modules.items()]
    try:
        with torch.no_grad():
            for inputs, _ in examples.batches():
                mask[0] = inputs.get("attention_mask")
                batch.clear()
                model(**inputs)
                if broken[0]:
                    break
    finally:
        for h in hooks:
            h.remove()
        batch.clear()
    if broken[0]:
        return gram_matrices(model, examples, modules, share=False)
    for n, g in grams.items():
        if n not in owner:
            g.div_(max(rows[n], 1))
    return grams


def gram_groups(
    model: Any,
    examples: Examples,
    modules: Mapping[str, tuple[Any, bool]],
    layers: Mapping[str, int | None],
) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`gram_matrices` of ``modules`` a group at a time: consecutive whole layers
    (``layers``: a module's layer index; None, outside the layers, goes last) whose
    matrices take at most 1 / :data:`STATS_SHARE` of the model's float32 bytes. Each module's
    matrix is the bytes one pass over every module gives."""
    budget = 4 * sum(p.numel() for p in model.parameters()) // STATS_SHARE
    for group in layer_groups(modules, layers, budget):
        yield gram_matrices(model, examples, group)


def gram_shapes(modules: Mapping[str, tuple[Any, bool]]) -> dict[str, list[int]]:
    """The shape of each module's Gram matrix: ``[in, in]``."""
    return {n: [_in_features(m, t)] * 2 for n, (m, t) in modules.items()}


def _in_features(module: Any, transposed: bool) -> int:
    return int(module.weight.shape[0 if transposed else 1])


def layer_groups(
    modules: Mapping[str, tuple[Any, bool]], layers: Mapping[str, int | None], budget: int
) -> list[dict[str, tuple[Any, bool]]]:
    """``modules`` cut into groups of consecutive whole layers of at most ``budget`` bytes
    of float32 Gram matrices (a layer over it alone), in layer order, the rest last."""
    sizes = {n: 4 * _in_features(m, t) ** 2 for n, (m, t) in modules.items()}
    return [{n: modules[n] for n in g} for g in grouped(sizes, layers, budget)]


def grouped(
    sizes: Mapping[str, int], layers: Mapping[str, int | None], budget: int
) -> list[list[str]]:
    """The names of ``sizes`` (bytes each) cut into groups of consecutive whole layers
    (``layers``: a name's layer index; None or absent: outside the layers) of at most
    ``budget`` bytes (a layer over it alone), in layer order, those outside last."""
    by_layer: dict[float, list[str]] = {}
    for name in sizes:
        layer = layers.get(name)
        by_layer.setdefault(float("inf") if layer is None else layer, []).append(name)
    groups: list[list[str]] = []
    size = 0
    for layer in sorted(by_layer):
        part = by_layer[layer]
        part_size = sum(sizes[n] for n in part)
        if groups and size + part_size <= budget:
            groups[-1] += part
            size += part_size
        else:
            groups.append(list(part))
            size = part_size
    return groups
