"""Statistics passes: the figures a method gathers over a chunked tensor before merging it.

A method with ``MergeMethod.stats`` (a trim threshold, norms) sees the same row chunks in
``rounds`` passes before the merge pass. :class:`StatsRounds` holds the statistics of the
tensors being chunked and says which passes are still wanted, so a pass the method no longer
needs (a bracket that already held) is neither read nor run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mergekit_like.execute.steps import Step
from mergekit_like.execute.tensor_step import method_failed
from mergekit_like.plan.tensors import PlannedTensor

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.spec import TensorStats


class StatsRounds:
    """The statistics of each tensor being merged in row chunks, pass by pass."""

    def __init__(self, new_stats: Callable[[PlannedTensor], TensorStats | None]) -> None:
        self._new_stats = new_stats
        self._gathering: dict[str, TensorStats | None] = {}
        self._finished: dict[str, int] = {}  # per tensor, the last statistics round finished

    def wanted(self, step: Step) -> bool:
        """Whether a step is a merge pass, or a statistics pass the method still needs."""
        stats = self._gathering.get(step.pt.name)
        return step.round < 0 or stats is None or stats.wants(step.round)

    def deferred(self, step: Step) -> bool:
        """Whether to leave a statistics pass's first read to the compute thread.

        The first chunk of a round after the first is loaded while the round before ends:
        bet that it settles the method's need, and let the compute thread read the chunk
        itself should the round be wanted after all.
        """
        return step.round > 0 and self._finished.get(step.pt.name, -1) < step.round - 1

    def current(self, step: Step) -> TensorStats | None:
        """The statistics of ``step``'s tensor, started at its first chunk."""
        pt = step.pt
        chunked = step.rows is not None and step.rows != (0, pt.shape[0])
        if chunked and pt.name not in self._gathering:
            self._gathering[pt.name] = self._new_stats(pt)
        return self._gathering.get(pt.name)

    def observe(self, step: Step, stats: TensorStats, tensors: list[torch.Tensor],
                base: torch.Tensor | None) -> None:
        """Feed one chunk to a statistics pass; finish the pass at its last chunk."""
        try:
            stats.observe(step.round, tensors, base, step.start)
            if step.last:
                stats.finish(step.round)
                self._finished[step.pt.name] = step.round
        except (ValueError, RuntimeError) as exc:
            raise method_failed(step.pt, exc) from None

    def merged(self, step: Step) -> None:
        """Forget a tensor's statistics once its last chunk is merged."""
        if step.last:
            self._gathering.pop(step.pt.name, None)
