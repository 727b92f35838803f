"""The genotype: a flat vector of the searched recipe parameters, and the recipe it stands for.

The vector is laid out as mergekit-evolve lays it out, ``(layer group, model, filter set,
parameter)`` flattened in that order, ``weight`` first and ``density`` second. Values become
recipe parameters as in mergekit-evolve: a density is ``|x|`` clipped to [0, 1], a weight is
``|x|`` unless ``allow_negative_weights``. Layer groups become ``slices`` (one per group of
``layer_granularity`` layers) or, with ``smooth``, gradients over the layers; a genome with
one group and no ``smooth`` is a plain ``models:`` recipe.

Example::

    g = Genome(cfg.genome, num_layers=4)
    g.initial()               # equal weights, density 1
    g.recipe_data(x, dtype)   # {"merge_method": "ties", "slices": [...], ...}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mergekit_like.errors import MergeError
from mergekit_like.evolve.config import METHOD_PARAMS, GenomeConfig


class Genome:
    """Maps genotypes of one genome definition to recipe data (a pure function of ``x``)."""

    def __init__(self, cfg: GenomeConfig, num_layers: int) -> None:
        g = cfg.layer_granularity
        if g > 0 and num_layers % g:
            raise MergeError(f"genome.layer_granularity: {g} does not divide the models' "
                             f"{num_layers} layers")
        self.cfg = cfg
        self.num_layers = num_layers
        self.groups = num_layers // g if g > 0 else 1
        self.params = METHOD_PARAMS[cfg.merge_method]
        self.filters: list[str | None] = [*(cfg.filters or []), None]
        self.shape = (self.groups, len(cfg.models), len(self.filters), len(self.params))

    @property
    def size(self) -> int:
        """The number of searched values."""
        return int(np.prod(self.shape))

    def initial(self, random: bool = False, seed: int = 0) -> np.ndarray:
        """mergekit-evolve's start: weight 1/models, density 1 (or uniform [0, 1), seeded)."""
        if random:
            return np.random.Generator(np.random.PCG64(seed)).random(self.size)
        x = np.zeros(self.shape)
        x[..., 0] = 1 / len(self.cfg.models)
        x[..., 1:] = 1.0
        return x.reshape(-1)

    def values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each parameter's recipe values, shaped (group, model, filter set)."""
        arr = np.asarray(x, dtype=np.float64).reshape(self.shape)
        out = {}
        for i, name in enumerate(self.params):
            v = arr[..., i]
            if name == "density":
                v = np.clip(np.abs(v), 0.0, 1.0)
            elif not self.cfg.allow_negative_weights:
                v = np.abs(v)
            out[name] = v
        return out

    def named_values(self, x: np.ndarray) -> dict[str, list[float]]:
        """For reports: ``models[i].weight[filter]`` -> one value per layer group."""
        out = {}
        for name, v in self.values(x).items():
            for m in range(len(self.cfg.models)):
                for s, filt in enumerate(self.filters):
                    key = f"models[{m}].{name}" + (f"[{filt}]" if filt else "")
                    out[key] = [float(a) for a in v[:, m, s]]
        return out

    def _param(self, v: np.ndarray, m: int, group: slice | int) -> Any:
        """One parameter of model ``m``: a number, a gradient, or a filter list of them."""
        def one(s: int) -> Any:
            vals = [float(a) for a in np.atleast_1d(v[group, m, s])]
            return vals[0] if len(vals) == 1 else vals

        if len(self.filters) == 1:
            return one(0)
        return [({"filter": f} if f else {}) | {"value": one(s)}
                for s, f in enumerate(self.filters)]

    def recipe_data(self, x: np.ndarray, dtype: str | None = None,
                    out_dtype: str | None = None) -> dict[str, Any]:
        """The recipe (as YAML-ready data) of genotype ``x``."""
        cfg = self.cfg
        vals = self.values(x)
        extra = cfg.base_model is not None and cfg.base_model not in cfg.models
        data: dict[str, Any] = {"merge_method": cfg.merge_method}
        if self.groups == 1 or cfg.smooth:
            group = slice(None) if cfg.smooth else 0
            models = [{"model": ref, "parameters": {p: self._param(v, m, group)
                                                    for p, v in vals.items()}}
                      for m, ref in enumerate(cfg.models)]
            data["models"] = models + ([{"model": cfg.base_model}] if extra else [])
        else:
            step = self.num_layers // self.groups
            slices = []
            for g in range(self.groups):
                lr = [g * step, (g + 1) * step]
                sources = [{"model": ref, "layer_range": list(lr),
                            "parameters": {p: self._param(v, m, g) for p, v in vals.items()}}
                           for m, ref in enumerate(cfg.models)]
                if extra:
                    sources.append({"model": cfg.base_model, "layer_range": list(lr)})
                slices.append({"sources": sources})
            data["slices"] = slices
        if cfg.base_model is not None:
            data["base_model"] = cfg.base_model
        normalize = cfg.normalize
        if normalize is None:
            normalize = cfg.merge_method in ("linear", "ties", "dare_ties")
        data["parameters"] = {"normalize": normalize}
        for key, value in (("dtype", dtype), ("out_dtype", out_dtype),
                           ("tokenizer_source", cfg.tokenizer_source)):
            if value is not None:
                data[key] = value
        return data
