"""AdaMerging (Yang et al., 2024): coefficients on the task vectors learned without labels.

The merged model is ``theta_0 + sum_k lambda_k tau_k`` with ``tau_k = theta_k - theta_0``;
``lambda`` is one number per task vector (``granularity: task``) or one per tensor of each
task vector (``layer``). Starting from ``init`` (0.3), each step runs the merged model on a
batch of unlabeled inputs, takes the mean Shannon entropy of its predictions (per example
for classification, per token for a causal LM), steps the optimiser and clamps ``lambda``
to [0, 1].

Every merged tensor's base and ingredient values are held while learning, each in the
narrowest float type that gives its float32 values back exactly (:class:`TaskTensors`:
bfloat16 for a bfloat16 checkpoint, half the bytes of float32), not as float32 task
vectors: a tensor's task vectors are formed when it is mixed (:func:`mix_into`) and
again when its gradient is complete (:func:`gradient_shares`), so only one tensor's are
held at once, and each gradient is let go as soon as it is turned into its share of the
coefficients'. The mix is written into the live model's own tensors, which are the leaves
autograd differentiates (no second float32 model). The numbers are those of
``theta_0 + tensordot(lambda, tau)`` under autograd, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from mergekit_like.datamerge.statistics import Examples, gradients_only
from mergekit_like.recipe.datamerge import AdaMergingParams

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Learned:
    """The learned coefficients ([K] or [tensors, K]) and the entropy before each step."""

    coefficients: torch.Tensor
    entropy: list[float]


def prediction_entropy(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Mean Shannon entropy (nats) of softmax(logits) over examples (or tokens)."""
    logp = logits.float().log_softmax(-1)
    if task == "perplexity":
        logp = logp[:, :-1]
    return -(logp.exp() * logp).sum(-1).mean()


@dataclass(frozen=True)
class TaskTensors:
    """One merged tensor held in memory: the base's values and each ingredient's
    (:func:`compact`)."""

    base: torch.Tensor
    models: tuple[torch.Tensor, ...]

    @property
    def numel(self) -> int:
        return self.base.numel()

    @property
    def count(self) -> int:
        """K, the task vectors."""
        return len(self.models)

    def vectors(self, space: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
        """The base in float32 and the task vectors ``theta_k - theta_0`` in float32,
        stacked ([K, ...]), formed in ``space`` (valid until its next use)."""
        return _formed(space, tuple(self.base.shape), self.base, self.models)


@dataclass(frozen=True)
class ReadTaskTensors:
    """One merged tensor read from the ingredients' files whenever it is wanted:
    ``read(0)`` the base's values, ``read(k)`` ingredient k's (float32)."""

    shape: tuple[int, ...]
    count: int
    read: Callable[[int], torch.Tensor]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def vectors(self, space: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`TaskTensors.vectors`, each value read again."""
        models = (self.read(k) for k in range(1, self.count + 1))
        return _formed(space, self.shape, self.read(0), models)


Held = TaskTensors | ReadTaskTensors


def _formed(
    space: Workspace, shape: tuple[int, ...], base_values: torch.Tensor, models: Iterable[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    n = math.prod(shape)
    base = space.base[:n].view(shape).copy_(base_values)
    k = space.count
    vec = space.vectors[: k * n].view((k, *shape))
    for i, m in enumerate(models):
        vec[i].copy_(m).sub_(base)
    return base, vec


class Workspace:
    """Float32 room for one tensor's base and task vectors, reused by every tensor (so that
    the large short-lived buffers of each step are not allocated and freed again)."""

    def __init__(self, tensors: Sequence[Held]) -> None:
        import torch

        n = max(t.numel for t in tensors)
        self.count = tensors[0].count
        self.base = torch.empty(n, dtype=torch.float32)
        self.vectors = torch.empty(self.count * n, dtype=torch.float32)


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` (float32) as bfloat16 or float16 where that holds every value exactly, else
    ``t`` itself."""
    import torch

    for dtype in (torch.bfloat16, torch.float16):
        narrow = t.to(dtype)
        if torch.equal(narrow.float(), t):
            return narrow
    return t


def mix_into(
    leaves: Sequence[torch.Tensor], tensors: Sequence[Held], coef: torch.Tensor, space: Workspace
) -> None:
    """Write one step's ``theta_0 + sum_k coef_k tau_k`` of each tensor (``coef``: [K] or
    [tensors, K]) into its leaf (the live model's own tensor), without autograd."""
    import torch

    with torch.no_grad():
        for i, (leaf, t) in enumerate(zip(leaves, tensors, strict=True)):
            leaf.copy_(merged_tensor(t, coef, i, space))


@contextmanager
def gradient_shares(
    leaves: Sequence[torch.Tensor], tensors: Sequence[Held], space: Workspace
) -> Iterator[list[torch.Tensor | None]]:
    """Within: each leaf asks for a gradient, and its gradient, once complete, is turned at
    once into its share of the coefficients' gradient (``tensordot``'s backward, the task
    vectors formed again) and let go; the shares land in the list given (None: no gradient
    reached it; the caller resets it every step). So a backward pass holds one tensor's
    gradient at a time, not the model's. The leaves' flags are restored on leaving."""
    shares: list[torch.Tensor | None] = [None] * len(leaves)
    flags = [(leaf, leaf.requires_grad) for leaf in leaves]
    hooks = []
    try:
        for i, (leaf, t) in enumerate(zip(leaves, tensors, strict=True)):
            leaf.requires_grad_(True)
            hook = partial(_share, t, space, shares, i)
            hooks.append(leaf.register_post_accumulate_grad_hook(hook))
        yield shares
    finally:
        for h in hooks:
            h.remove()
        for leaf, wanted in flags:
            leaf.grad = None
            leaf.requires_grad_(wanted)


def live_leaves(model: Any, names: Sequence[str]) -> list[torch.Tensor]:
    """The live model's own parameters (or buffers) named ``names``."""
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(model.named_buffers(remove_duplicate=False))
    return [own[n] for n in names]


def _share(t: Held, space: Workspace, shares: list[torch.Tensor | None], i: int, leaf: Any) -> None:
    _, v = t.vectors(space)
    k = v.shape[0]
    shares[i] = leaf.grad.reshape(1, -1).mm(v.reshape(k, -1).t()).reshape(k)
    leaf.grad = None


def coefficient_grad(shares: Sequence[torch.Tensor | None], coef: torch.Tensor) -> torch.Tensor:
    """``coef``'s gradient from the tensors' shares, summed as autograd sums them when the
    mix is part of the graph: the last tensor's first."""
    import torch

    if coef.dim() == 2:
        grad = torch.zeros_like(coef)
        for i, s in enumerate(shares):
            if s is not None:
                grad[i] = s
        return grad
    total = None
    for s in reversed(shares):
        if s is not None:
            total = s if total is None else total + s
    return torch.zeros_like(coef) if total is None else total


def merged_tensor(t: Held, coef: torch.Tensor, index: int, space: Workspace) -> torch.Tensor:
    """Tensor ``index`` of the merge with the learned ``coef`` (no autograd)."""
    import torch

    c = coef if coef.dim() == 1 else coef[index]
    with torch.no_grad():
        base, vec = t.vectors(space)
        return base + torch.tensordot(c, vec, dims=1)


def batch_at(examples: Examples, size: int, seed: int, step: int) -> dict[str, Any]:
    """The inputs of ``step``'s batch: the examples reshuffled every pass (seeded)."""
    import torch

    n = len(examples)
    per_pass = max(1, -(-n // size))
    epoch, i = divmod(step, per_pass)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)[i * size : (i + 1) * size]
    return {k: v[perm] for k, v in examples.inputs.items()}


def learn_coefficients(
    model: Any,
    names: Sequence[str],
    tensors: Sequence[Held],
    examples: Examples,
    params: AdaMergingParams,
    progress: Any = None,
) -> Learned:
    """Learn AdaMerging's coefficients; ``names`` are the model's own names of the merged
    tensors (``tensors`` in the same order)."""
    import torch

    k = tensors[0].count
    space = Workspace(tensors)
    shape = (k,) if params.granularity == "task" else (len(names), k)
    coef = torch.full(shape, params.init, dtype=torch.float32, requires_grad=True)
    opt = (
        torch.optim.Adam([coef], lr=params.lr)
        if params.optimizer == "adam"
        else torch.optim.SGD([coef], lr=params.lr)
    )
    size = params.batch_size or examples.batch_size
    history = []
    steps = range(params.steps) if progress is None else progress(list(range(params.steps)))
    leaves = live_leaves(model, names)  # the mix is written into the model itself
    own = {id(t) for t in leaves}  # the model's other parameters ask for no gradient
    with (
        gradients_only(model, lambda p: id(p) in own),
        gradient_shares(leaves, tensors, space) as shares,
    ):
        for step in steps:
            mix_into(leaves, tensors, coef.detach(), space)
            shares[:] = [None] * len(shares)
            loss = prediction_entropy(
                model(**batch_at(examples, size, params.seed, step)).logits, examples.task
            )
            opt.zero_grad()
            loss.backward()
            coef.grad = coefficient_grad(shares, coef)
            opt.step()
            with torch.no_grad():
                coef.clamp_(0.0, 1.0)
            history.append(float(loss.detach()))
            del loss
    return Learned(coef.detach().clone(), history)


def coefficient_table(
    coef: torch.Tensor, refs: Sequence[str], tensor_names: Sequence[str]
) -> Mapping[str, Any]:
    """The coefficients for the report: ``{model: value}`` or ``{tensor: {model: value}}``."""
    if coef.dim() == 1:
        return {r: float(coef[j]) for j, r in enumerate(refs)}
    return {
        n: {r: float(coef[i, j]) for j, r in enumerate(refs)} for i, n in enumerate(tensor_names)
    }
