"""Sparsification of task vectors: which entries of ``x - base`` survive, and how they are rescaled.

Four ways to trim one task vector (a :class:`Trim` names one and its settings):

- ``magnitude`` (TIES): keep the ``max(1, int(density * n))`` largest magnitudes (one at
  least for any positive density, as mergekit).
- ``outliers`` (Model Breadcrumbs): drop the ``int(gamma * n)`` largest magnitudes *and* the
  smallest, so that ``int(density * n)`` entries remain.

These two rank magnitudes within the tensor, keeping exactly that many entries
(:mod:`~.rank_select`), as mergekit 0.1.5 does: ``argsort(|delta|.float(),
descending=True)[:k]`` (TIES) and ``sort(|delta|.float()).indices[n_bot:n_bot + keep]``
with ``n_bot = max(0, n - keep - n_top)`` (Breadcrumbs), both unstable sorts. Which of
the entries equal to the magnitude at a cut-off are kept is what torch's sort on a CPU
(mergekit's default device) makes of them: libstdc++'s ``std::sort``, an introsort of
(magnitude, index) pairs, whose order among equal magnitudes follows from every value of
the tensor and from no rule of positions. Where a cut falls among equal magnitudes, the
window replays that sort (:mod:`~.introsort`; ``TIE_ORDER``), on every device and for every
chunking, after one more pass over the tensor that gathers its magnitudes (4 bytes an
entry, some 18 while replaying); the chunks it splits are then trimmed by torch, not the C
kernels. Elsewhere every rule keeps the same entries. (mergekit on CUDA sorts stably:
there TIES keeps the earlier of equal magnitudes at the cut-off, Breadcrumbs ranks them
by position; ``RankWindow(ties="descending")`` and ``"ascending"`` are those rules.) A
float64 compute dtype keeps the stable rule (mergekit sorts its float32 rounding).

Unless ``Trim.bounds`` is given: then they keep the entries with ``low <= |delta| <= high``,
bounds ranked over the whole model beforehand (``model_wide_trim``, not a mergekit feature:
:mod:`mergekit_like.execute.global_trim`), every tie at a bound kept.
- ``random`` (DARE): keep each entry independently with probability ``density``.
- ``della`` (DELLA's MagPrune): keep each entry with a probability that grows with its
  magnitude rank within its row, from ``density - epsilon`` (smallest) to
  ``density + epsilon`` (largest), so the expected kept fraction is ``density``.

Random trims compare each entry with its own uniform draw (:class:`~.draws.Draws`), which
depends only on the run's seed, the tensor's name, the model's index and the entry's position.

Trimmed whole (:func:`sparsify`) or in row chunks (:class:`TrimState`), a tensor gives the
same bytes: the rank windows and L1 norms are gathered over the whole tensor in passes first.

Rescaling the kept entries (``Trim.rescale``):

- ``"l1"`` (mergekit's ``rescale: true``): multiply by ``|delta|_1 / |kept|_1`` so the task
  vector keeps its L1 norm (left alone when either norm is below 1e-7). Rank trims take
  mergekit's ``torch.sum`` of the whole tensor's magnitudes (:class:`~.reductions.TorchSum`,
  held whole until summed); random ones a fixed order (:class:`~.reductions.BlockSums`).
- ``"probability"`` (the DARE and DELLA papers): divide each kept entry by the probability it
  had of being kept: ``1 / density`` for DARE, ``1 / p_i`` for DELLA. Random trims only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mergekit_like.methods.rank_select import Edges, RankWindow, TieOrder, rank_window_mask
from mergekit_like.methods.reductions import BlockSums, TorchSum

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.draws import Draws
    from mergekit_like.methods.passes import Rule, RulePost

TrimKind = Literal["magnitude", "outliers", "random", "della"]
TIE_ORDER: dict[str, TieOrder] = {"magnitude": "cpu_descending", "outliers": "cpu_ascending"}
"""How each rank trim orders equal magnitudes (:class:`~.rank_select.RankWindow`)."""
RANDOM_TRIMS: frozenset[str] = frozenset({"random", "della"})
L1_EPS = 1e-7


@dataclass(frozen=True)
class Trim:
    """How one task vector is sparsified before it is weighted and mixed.

    ``bounds``: magnitude and outlier trims only; ``(low, high)`` magnitudes ranked over the
    whole model, used instead of ranking within the tensor.

    >>> Trim("random", density=0.3, rescale="l1")
    Trim(kind='random', density=0.3, gamma=0.0, epsilon=0.0, rescale='l1', bounds=None)
    """

    kind: TrimKind
    density: float = 1.0
    gamma: float = 0.0
    epsilon: float = 0.0
    rescale: Literal["l1", "probability"] | None = None
    bounds: tuple[float, float] | None = None


def trim_ranks(trim: Trim, numel: int) -> tuple[int, int]:
    """The ranks ``[lo, hi)`` a magnitude or outlier trim keeps (see :mod:`.rank_select`).

    ``magnitude``: the ``max(1, int(density * n))`` largest (for a positive density).
    ``outliers``: ``int(density * n)`` remain after dropping the ``int(gamma * n)`` largest
    and the smallest; when ``density + gamma > 1`` fewer large entries are dropped so the
    count still holds.

    >>> trim_ranks(Trim("outliers", 0.5, gamma=0.1), 20)
    (8, 18)
    """
    keep = int(trim.density * numel)
    if trim.kind == "magnitude":
        if 0.0 < trim.density and numel:
            keep = max(1, keep)  # mergekit keeps one entry at least
        return numel - keep, numel
    n_top = int(trim.gamma * numel)
    n_bottom = numel - keep - n_top
    if n_bottom < 0:
        n_top += n_bottom
        n_bottom = 0
    return n_bottom, numel - n_top


def magnitude_mask(delta: torch.Tensor, density: float,
                   threshold: float | None = None) -> torch.Tensor:
    """A boolean mask keeping the ``max(1, int(density * numel))`` entries of largest magnitude.

    ``density >= 1`` keeps everything, ``density <= 0`` nothing. Exactly k entries are kept:
    of equal magnitudes at the threshold, those torch's descending sort on a CPU puts first
    (see the module docstring).
    With ``threshold`` (ranked over the whole model), keeps ``|delta| >= threshold`` instead.

    >>> import torch
    >>> magnitude_mask(torch.tensor([0.5, -3.0, 2.0]), 0.5, threshold=0.5).tolist()
    [True, True, True]
    """
    import torch

    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    if threshold is not None:
        return delta.abs() >= threshold
    return rank_window_mask(delta.abs(), *trim_ranks(Trim("magnitude", density), delta.numel()),
                            ties=TIE_ORDER["magnitude"])


def outlier_mask(delta: torch.Tensor, density: float, gamma: float,
                 bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Model Breadcrumbs' mask: drop the largest ``gamma`` fraction and the smallest entries.

    ``int(density * n)`` entries remain (:func:`trim_ranks`); of equal magnitudes at a
    cut-off, those torch's ascending sort on a CPU ranks inside (see the module docstring).
    With ``bounds`` (ranked over the whole model), keeps ``low <= |delta| <= high`` instead.
    """
    import torch

    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    if bounds is not None:
        mags = delta.abs()
        return (mags >= bounds[0]) & (mags <= bounds[1])
    return rank_window_mask(delta.abs(), *trim_ranks(Trim("outliers", density, gamma),
                                                     delta.numel()),
                            ties=TIE_ORDER["outliers"])


def della_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probabilities: linear in the magnitude rank along dimension 1 (rows).

    ``p = density - epsilon + 2 * epsilon * rank / (n - 1)`` with rank 0 the smallest
    magnitude of its row (ties by position, as a stable ascending sort ranks them: mergekit's
    ``argsort`` of the row on CUDA; on a CPU its unstable sort ranks equal magnitudes
    otherwise, which moves their probabilities by at most ``2 * epsilon * ties / (n - 1)``:
    not replayed, DELLA's draws being random anyway); a 1-D tensor is one row; rows of one
    entry
    get ``p = density``. Returned as float32, shaped like ``delta``.
    """
    import torch

    if not 0.0 < density - epsilon or not density + epsilon < 1.0:
        raise ValueError(f"della needs 0 < density - epsilon and density + epsilon < 1, got "
                         f"density {density} and epsilon {epsilon}")
    mags = delta.abs().float()
    if mags.dim() < 2:
        mags = mags.reshape(1, -1)
    n = mags.shape[1]
    order = torch.argsort(mags, dim=1, stable=True)
    ranks = torch.empty_like(mags)
    steps = torch.arange(n, dtype=torch.float32, device=mags.device)
    shape = [1] * mags.dim()
    shape[1] = n
    ranks.scatter_(1, order, steps.view(shape).expand_as(mags))
    rank_norm = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    return (density - epsilon + 2.0 * epsilon * rank_norm).view(delta.shape)


class TrimState:
    """One model's trim of one tensor, which the executor may see in row chunks.

    ``rounds`` passes gather what the trim needs over the whole tensor first: the rank
    window's boundaries (magnitude and outlier trims, :class:`~.rank_select.RankWindow`), then
    the L1 norms before and after trimming (``rescale="l1"``). :meth:`observe` every chunk of
    the task vector, in order, and :meth:`finish` each round; then :meth:`apply` each chunk, in
    order. ``draws``: the model's random draws (random trims). ``bracket``: the rank window
    tries a bracket round first (see :class:`~.rank_select.RankWindow`).
    """

    def __init__(self, trim: Trim, numel: int, width: int, draws: Draws | None = None,
                 bracket: bool = False) -> None:
        if trim.bounds is not None and trim.kind not in ("magnitude", "outliers"):
            raise ValueError(f"{trim.kind} sparsification cannot use bounds ranked over the model")
        if trim.kind not in ("magnitude", "outliers", *RANDOM_TRIMS):
            raise ValueError(f"unknown sparsification {trim.kind!r}")
        active = 0.0 < trim.density < 1.0
        if active and trim.kind in RANDOM_TRIMS and draws is None:
            raise ValueError(f"{trim.kind} sparsification needs random draws")
        self.trim, self.draws = trim, draws
        self.window = None
        if active and trim.kind in ("magnitude", "outliers") and trim.bounds is None:
            self.window = RankWindow(numel, *trim_ranks(trim, numel), width, bracket,
                                     ties=TIE_ORDER[trim.kind])
        self._rank_rounds = self.window.rounds if self.window is not None else 0
        self._l1 = active and trim.rescale == "l1"
        self.rounds = self._rank_rounds + int(self._l1)
        sums = BlockSums if trim.kind in RANDOM_TRIMS else TorchSum  # mergekit's for ranks
        self._norms: tuple[BlockSums | TorchSum, ...] = (sums(numel), sums(numel))
        self._scale: torch.Tensor | None = None

    def wants(self, round_: int) -> bool:
        """Whether round ``round_`` is still needed (see :meth:`.RankWindow.wants`)."""
        if round_ < self._rank_rounds:
            assert self.window is not None
            return self.window.wants(round_)
        return round_ < self.rounds

    def observe(self, round_: int, delta: torch.Tensor, start: int,
                edges: Edges | None = None) -> None:
        """Take the next chunk of the task vector into round ``round_``; ``edges``: the
        chunk's rank-window edges, when :meth:`rule` took them already."""
        if round_ < self._rank_rounds:
            assert self.window is not None
            self.window.observe(round_, delta.abs())
        elif self.norm_round(round_):
            mags = delta.abs()
            kept, _ = self._keep(delta, start, mags=mags, edges=edges)
            self.add_norms(mags, kept.abs_())

    def norm_round(self, round_: int) -> bool:
        """Whether round ``round_`` sums the L1 norms before and after trimming."""
        return self._l1 and round_ == self._rank_rounds

    @property
    def norms(self) -> tuple[BlockSums | TorchSum, ...]:
        """The norm round's sums of the magnitudes before and after trimming."""
        return self._norms

    def add_norms(self, mags: torch.Tensor, kept: torch.Tensor) -> None:
        """Take the next chunk's magnitudes before and after trimming into the norm round."""
        self._norms[0].add(mags)
        self._norms[1].add(kept)

    def finish(self, round_: int) -> None:
        """Close round ``round_`` (after its last chunk)."""
        if round_ < self._rank_rounds:
            assert self.window is not None
            self.window.finish(round_)
        elif self._l1 and round_ == self._rank_rounds:
            before, after = self._norms[0].total(), self._norms[1].total()
            self._scale = None if before < L1_EPS or after < L1_EPS else before / after
            if self.window is not None:
                self.window.restart()

    def window_values(self) -> list[int]:
        """The boundary magnitudes (bit patterns) whose equal entries a chunk must count
        before :meth:`rule` (none unless the trim ranks within the tensor)."""
        if self.window is None or not 0.0 < self.trim.density < 1.0:
            return []
        return self.window.boundary_values()

    def known_counts(self) -> list[int] | None:
        """The next chunk's counts for :meth:`rule`, where the rank window knows them
        already (:meth:`.RankWindow.known_counts`); None: count them."""
        if not self.window_values():
            return []
        assert self.window is not None
        return self.window.known_counts()

    def rule(self, start: int, numel: int, counts: Sequence[int], device: torch.device | str,
             places: Callable[[int, list[int]], list[int]]) -> Rule | Edges:
        """The next chunk's trim as a :class:`~.passes.Rule`, given how many of its entries
        equal each of :meth:`window_values`, and ``places(value, ks)``: the flat position
        of the chunk's ``k``-th entry whose magnitude bits equal ``value``, for each ``k`` of
        ``ks`` (asked for only where a rank window's edge falls among them, and the window's
        ledger does not know them: :meth:`.RankWindow.known_places`). Where the trim
        keeps by magnitude bounds or DELLA's ranks, or the rule cannot rescale as asked, the
        chunk's :class:`~.rank_select.Edges` (possibly empty) instead, for :meth:`apply`
        (so too in a rank trim's L1 norm round)."""
        from mergekit_like.methods.passes import Rule

        trim = self.trim
        if trim.density >= 1.0:
            return Rule("all")
        if trim.density <= 0.0:
            return Rule("zero")
        edges = Edges(None, None)
        if self.window is not None and self.window.boundary_values():
            edges = self.window.edges(counts)
        post: RulePost = "none"
        if trim.rescale == "probability":
            post = "divide"
        elif self._l1 and self._scale is not None:
            post = "scale"
        if trim.kind == "random":
            assert self.draws is not None
            return Rule("random", p=trim.density, factor=self._scale or 1.0, post=post,
                        key=self.draws.key, start=start)
        torch_norms = self._l1 and isinstance(s := self._norms[0], TorchSum) and s.seen < s.numel
        if self.window is None or post == "divide" or edges.picks or torch_norms:
            return edges
        if self.window.lo >= self.window.hi:
            return Rule("window", lo=0, hi=0, factor=self._scale or 1.0, post=post)
        spans = []
        for value, lo, hi, count in edges.split:  # keep the equal entries ranked in the window
            asked = [k for k in (lo, hi) if k < count]
            known = self.window.known_places(value, asked)
            found = dict(zip(asked, places(value, asked) if known is None else known,
                             strict=True))
            spans.append((value, found.get(lo, numel), found.get(hi, numel)))
        return Rule("window", lo=edges.lo, hi=edges.hi, factor=self._scale or 1.0, post=post,
                    spans=tuple(spans))

    def apply(self, delta: torch.Tensor, start: int, *, inplace: bool = False,
              edges: Edges | None = None) -> torch.Tensor:
        """The next chunk trimmed and rescaled: a new tensor, or ``delta`` itself updated
        with ``inplace``. ``edges``: the chunk's rank-window edges, when :meth:`rule` took
        them already."""
        import torch

        if self.trim.density >= 1.0:
            return delta
        if self.trim.density <= 0.0:
            return delta.zero_() if inplace else torch.zeros_like(delta)
        kept, prob = self._keep(delta, start, inplace=inplace, edges=edges)
        if self.trim.rescale == "probability":
            if prob is None:
                raise ValueError("rescaling by keep probability applies to random trims only")
            return kept.div_(prob if isinstance(prob, float) else prob.to(kept.dtype))
        if self._l1 and self._scale is not None:
            return kept.mul_(self._scale)
        return kept

    def _keep(self, delta: torch.Tensor, start: int, *, inplace: bool = False,
              mags: torch.Tensor | None = None, edges: Edges | None = None
              ) -> tuple[torch.Tensor, float | torch.Tensor | None]:
        """``delta * mask`` for the chunk, and the keep probability (random trims);
        ``mags``: ``delta.abs()`` when the caller has it already."""
        import torch

        trim = self.trim
        prob: float | torch.Tensor | None = None
        if trim.kind in RANDOM_TRIMS:
            assert self.draws is not None
            prob = (trim.density if trim.kind == "random"
                    else della_probabilities(delta, trim.density, trim.epsilon))
            draw = self.draws.take(start, start + delta.numel(), delta.device).view(delta.shape)
            mask = torch.lt(draw, prob, out=draw).to(delta.dtype)  # 1.0 kept, 0.0 dropped
        elif self.window is not None:
            mask = self.window.mask(delta.abs() if mags is None else mags, edges)
        else:
            assert trim.bounds is not None
            mags = delta.abs() if mags is None else mags
            low, high = trim.bounds
            bool_mask = mags >= low
            if trim.kind == "outliers":
                bool_mask.logical_and_(mags <= high)
            mask = bool_mask.to(delta.dtype)
        return (delta.mul_(mask) if inplace else delta * mask), prob


def sparsify(delta: torch.Tensor, trim: Trim, draws: Draws | None = None) -> torch.Tensor:
    """``delta`` trimmed and rescaled as ``trim`` says (a new tensor; ``delta`` is untouched).

    Random trims need ``draws`` (:class:`~.draws.Draws`). ``density >= 1`` returns ``delta``
    unchanged (no rescaling), ``density <= 0`` returns zeros. The whole-tensor form of
    :class:`TrimState`, with the same bytes as any chunking of it.
    """
    import torch

    state = TrimState(trim, delta.numel(), torch.finfo(delta.dtype).bits, draws)
    for round_ in range(state.rounds):
        if state.wants(round_):
            state.observe(round_, delta, 0)
            state.finish(round_)
    return state.apply(delta, 0)


def variance_mask(deltas: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """SCE's selection: keep the positions where the task vectors vary most across models.

    Keeps the top ``int(fraction * m)`` positions by (population) variance over the models,
    where ``m`` counts positions of non-zero variance (of equal variances at the cut-off, the
    earlier positions, as mergekit's ``topk``); a boolean mask shaped like one delta.
    """
    import torch

    variance = torch.var(torch.stack(deltas), dim=0, unbiased=False)
    k = int(fraction * int(torch.count_nonzero(variance)))
    n = variance.numel()
    return rank_window_mask(variance, n - k, n, ties="descending").view_as(variance)
