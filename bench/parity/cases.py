"""The recipes run by both tools: every method both have, with representative parameters.

Each case builds a mergekit YAML (as a dict) from a family's member paths. ``random`` cases
(DARE, DELLA) are compared by statistics; the rest must agree entry for entry at float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models import Family

Paths = dict[str, Path]


@dataclass(frozen=True)
class Case:
    """One recipe: ``build(paths, family)`` gives the mergekit YAML as a dict."""

    name: str
    method: str
    build: Callable[[Paths, Family], dict]
    random: bool = False
    quick: bool = False  # in --quick runs (then also core)
    core: bool = False  # run on every family; the others on llama-f32 only
    slices: bool = False


def _m(p: Paths, member: str, **params) -> dict:
    out: dict = {"model": str(p[member])}
    if params:
        out["parameters"] = params
    return out


def _grad(fam: Family, lo: float, hi: float) -> list[float]:
    """A three-point gradient (interpolated over the layers by both tools)."""
    return [lo, (lo + hi) / 2 + 0.05, hi]


def _ta_family(method: str, extra_global: dict | None = None, **per_model) -> Callable:
    """A task-vector recipe: three fine-tunes with scalar, gradient and filter-list weights."""

    def build(p: Paths, fam: Family) -> dict:
        def params(i: int) -> dict:
            d = {k: v[i] for k, v in per_model.items()}
            return d

        weights = [
            0.6,
            _grad(fam, 0.2, 0.7),
            [{"filter": "self_attn", "value": 0.5}, {"value": 0.3}],
        ]
        models = [_m(p, "base")]
        for i, member in enumerate(("ft1", "ft2", "ft3")):
            models.append(_m(p, member, weight=weights[i], **params(i)))
        return {
            "merge_method": method,
            "base_model": str(p["base"]),
            "models": models,
            "parameters": dict(extra_global or {}),
        }

    return build


def _linear(p: Paths, fam: Family) -> dict:
    return {
        "merge_method": "linear",
        "models": [_m(p, "ft1", weight=0.5), _m(p, "ft2", weight=0.3), _m(p, "ft3", weight=0.2)],
    }


def _linear_grad(p: Paths, fam: Family) -> dict:
    return {
        "merge_method": "linear",
        "parameters": {"normalize": False},
        "models": [
            _m(p, "ft1", weight=_grad(fam, 0.2, 0.6)),
            _m(p, "ft2", weight=[{"filter": "mlp", "value": 0.7}, {"value": 0.25}]),
            _m(p, "ft3", weight=0.15),
        ],
    }


def _model_stock(filter_wise: bool) -> Callable:
    def build(p: Paths, fam: Family) -> dict:
        return {
            "merge_method": "model_stock",
            "base_model": str(p["base"]),
            "parameters": {"filter_wise": filter_wise},
            "models": [_m(p, "ft1"), _m(p, "ft2"), _m(p, "ft3")],
        }

    return build


def _slerp_models(p: Paths, fam: Family) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": str(p["base"]),
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
                {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
                {"value": 0.45},
            ]
        },
        "models": [_m(p, "base"), _m(p, "ft1")],
    }


def _slerp_slices(p: Paths, fam: Family) -> dict:
    n = fam.layers
    return {
        "merge_method": "slerp",
        "base_model": str(p["base"]),
        "slices": [
            {
                "sources": [
                    {"model": str(p["base"]), "layer_range": [0, n]},
                    {"model": str(p["ft2"]), "layer_range": [0, n]},
                ]
            }
        ],
        "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.9]}, {"value": 0.6}]},
    }


def _nuslerp(base: bool, **glob) -> Callable:
    def build(p: Paths, fam: Family) -> dict:
        d = {
            "merge_method": "nuslerp",
            "parameters": dict(glob),
            "models": [_m(p, "ft1", weight=0.3), _m(p, "ft2", weight=0.7)],
        }
        if base:
            d["base_model"] = str(p["base"])
        return d

    return build


def _multislerp(base: bool) -> Callable:
    def build(p: Paths, fam: Family) -> dict:
        d = {
            "merge_method": "multislerp",
            "models": [
                _m(p, "ft1", weight=0.5),
                _m(p, "ft2", weight=0.3),
                _m(p, "ft3", weight=0.4),
            ],
        }
        if base:
            d["base_model"] = str(p["base"])
        return d

    return build


def _karcher(p: Paths, fam: Family) -> dict:
    return {
        "merge_method": "karcher",
        "parameters": {"max_iter": 12, "tol": 1e-6},
        "models": [_m(p, "ft1"), _m(p, "ft2"), _m(p, "ft3")],
    }


def _nearswap(p: Paths, fam: Family) -> dict:
    return {
        "merge_method": "nearswap",
        "base_model": str(p["base"]),
        "parameters": {"t": 0.002},
        "models": [_m(p, "base"), _m(p, "ft1")],
    }


def _passthrough(p: Paths, fam: Family) -> dict:
    n = fam.layers
    return {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(p["ft1"]), "layer_range": [0, n - 1]}]},
            {"sources": [{"model": str(p["ft2"]), "layer_range": [1, n]}]},
        ],
    }


def _passthrough_same(p: Paths, fam: Family) -> dict:
    """Slices from one model (layers repeated), with a per-source scale."""
    n = fam.layers
    return {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(p["ft1"]), "layer_range": [0, n]}]},
            {
                "sources": [
                    {
                        "model": str(p["ft1"]),
                        "layer_range": [n - 2, n],
                        "parameters": {
                            "scale": [
                                {"filter": "o_proj", "value": 0.5},
                                {"filter": "down_proj", "value": 0.5},
                                {"value": 1.0},
                            ]
                        },
                    }
                ]
            },
        ],
    }


def _linear_slices(p: Paths, fam: Family) -> dict:
    """A merge over slices: two sources per slice, per-slice parameters."""
    n = fam.layers
    h = n // 2
    return {
        "merge_method": "linear",
        "slices": [
            {
                "sources": [
                    {"model": str(p["ft1"]), "layer_range": [0, h], "parameters": {"weight": 0.7}},
                    {"model": str(p["ft2"]), "layer_range": [0, h], "parameters": {"weight": 0.3}},
                ]
            },
            {
                "sources": [
                    {
                        "model": str(p["ft1"]),
                        "layer_range": [h, n],
                        "parameters": {"weight": [0.2, 0.8]},
                    },
                    {"model": str(p["ft3"]), "layer_range": [h, n], "parameters": {"weight": 0.5}},
                ]
            },
        ],
    }


def _two(method: str, **glob) -> Callable:
    def build(p: Paths, fam: Family) -> dict:
        return {
            "merge_method": method,
            "base_model": str(p["base"]),
            "parameters": dict(glob),
            "models": [_m(p, "base"), _m(p, "ft1")],
        }

    return build


def _all_fts(method: str, **glob) -> Callable:
    def build(p: Paths, fam: Family) -> dict:
        return {
            "merge_method": method,
            "base_model": str(p["base"]),
            "parameters": dict(glob),
            "models": [_m(p, "base"), _m(p, "ft1"), _m(p, "ft2"), _m(p, "ft3")],
        }

    return build


D3 = (0.5, 0.7, 0.6)
CASES: tuple[Case, ...] = (
    Case("linear", "linear", _linear, quick=True),
    Case("linear-grad-filter", "linear", _linear_grad, core=True),
    Case(
        "task_arithmetic",
        "task_arithmetic",
        _ta_family("task_arithmetic", {"lambda": 0.9}),
        quick=True,
    ),
    Case(
        "task_arithmetic-norm",
        "task_arithmetic",
        _ta_family("task_arithmetic", {"normalize": True}),
    ),
    Case("ties", "ties", _ta_family("ties", density=D3), quick=True),
    Case(
        "ties-int8-nonorm",
        "ties",
        _ta_family(
            "ties", {"int8_mask": True, "normalize": False, "lambda": 1.1}, density=(0.3, 0.9, 0.45)
        ),
        core=True,
    ),
    Case("ties-rescale", "ties", _ta_family("ties", {"rescale": True}, density=D3)),
    Case(
        "breadcrumbs",
        "breadcrumbs",
        _ta_family("breadcrumbs", density=(0.8, 0.9, 0.7), gamma=(0.05, 0.01, 0.1)),
        core=True,
    ),
    Case(
        "breadcrumbs_ties",
        "breadcrumbs_ties",
        _ta_family(
            "breadcrumbs_ties",
            {"normalize": True},
            density=(0.8, 0.9, 0.7),
            gamma=(0.05, 0.02, 0.1),
        ),
        core=True,
    ),
    Case("sce", "sce", _all_fts("sce", select_topk=0.6), quick=True),
    Case("sce-all", "sce", _all_fts("sce")),
    Case("model_stock", "model_stock", _model_stock(False), quick=True),
    Case("model_stock-filter_wise", "model_stock", _model_stock(True)),
    Case("slerp", "slerp", _slerp_models, quick=True),
    Case("slerp-slices", "slerp", _slerp_slices, slices=True),
    Case("nuslerp", "nuslerp", _nuslerp(False), quick=True),
    Case("nuslerp-base-rows", "nuslerp", _nuslerp(True, nuslerp_flatten=False)),
    Case(
        "nuslerp-rowwise", "nuslerp", _nuslerp(False, nuslerp_flatten=False, nuslerp_row_wise=True)
    ),
    Case("multislerp", "multislerp", _multislerp(False), quick=True),
    Case("multislerp-base", "multislerp", _multislerp(True)),
    Case("karcher", "karcher", _karcher, quick=True),
    Case("nearswap", "nearswap", _nearswap, quick=True),
    Case("passthrough-slices", "passthrough", _passthrough, quick=True, slices=True),
    Case("passthrough-scale", "passthrough", _passthrough_same, slices=True, core=True),
    Case("linear-slices", "linear", _linear_slices, slices=True),
    Case("dare_linear-d1", "dare_linear", _ta_family("dare_linear", density=(1.0, 1.0, 1.0))),
    Case("della-d1", "della", _ta_family("della", density=(1.0, 1.0, 1.0))),
    Case(
        "dare_linear", "dare_linear", _ta_family("dare_linear", density=D3), random=True, quick=True
    ),
    Case(
        "dare_linear-norescale",
        "dare_linear",
        _ta_family("dare_linear", {"rescale": False}, density=D3),
        random=True,
    ),
    Case("dare_ties", "dare_ties", _ta_family("dare_ties", density=D3), random=True, quick=True),
    Case(
        "della",
        "della",
        _ta_family("della", {"lambda": 0.95}, density=D3, epsilon=(0.1, 0.2, 0.15)),
        random=True,
        quick=True,
    ),
    Case(
        "della_linear",
        "della_linear",
        _ta_family("della_linear", density=D3, epsilon=(0.1, 0.1, 0.2)),
        random=True,
    ),
    Case("arcee_fusion", "arcee_fusion", _two("arcee_fusion")),
    Case("ram", "ram", _all_fts("ram", epsilon=1e-4)),
    Case("ramplus_tl", "ramplus_tl", _all_fts("ramplus_tl", r=0.2, alpha=0.3, epsilon=1e-4)),
)
