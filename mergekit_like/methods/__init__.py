"""The method registry: every merge method, registered here and nowhere else.

Adding a method: write ``methods/<name>.py`` with a pure tensor function and its parameter
models, build a :class:`MergeMethod`, and add it to ``_METHODS`` below. Importing this
package does not import torch; methods import it when they run.
"""

from __future__ import annotations

from types import MappingProxyType

from mergekit_like.methods.arcee_fusion import ARCEE_FUSION
from mergekit_like.methods.breadcrumbs import BREADCRUMBS, BREADCRUMBS_TIES
from mergekit_like.methods.dare import DARE_LINEAR, DARE_TIES
from mergekit_like.methods.della import DELLA, DELLA_LINEAR
from mergekit_like.methods.karcher import KARCHER
from mergekit_like.methods.linear import LINEAR
from mergekit_like.methods.model_stock import MODEL_STOCK
from mergekit_like.methods.multislerp import MULTISLERP
from mergekit_like.methods.nearswap import NEARSWAP
from mergekit_like.methods.nuslerp import NUSLERP
from mergekit_like.methods.passthrough import PASSTHROUGH
from mergekit_like.methods.ram import RAM, RAMPLUS_TL
from mergekit_like.methods.sce import SCE
from mergekit_like.methods.slerp import SLERP
from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext
from mergekit_like.methods.task_arithmetic import TASK_ARITHMETIC
from mergekit_like.methods.ties import TIES

_METHODS: tuple[MergeMethod, ...] = (
    LINEAR, TASK_ARITHMETIC, TIES, PASSTHROUGH,
    SLERP, NUSLERP, MULTISLERP, KARCHER, NEARSWAP,
    DARE_TIES, DARE_LINEAR, BREADCRUMBS, BREADCRUMBS_TIES, DELLA, DELLA_LINEAR, SCE, MODEL_STOCK,
    RAM, RAMPLUS_TL, ARCEE_FUSION,
)

REGISTRY: MappingProxyType[str, MergeMethod] = MappingProxyType({m.name: m for m in _METHODS})

__all__ = ["REGISTRY", "MergeMethod", "MethodParams", "TensorContext"]
