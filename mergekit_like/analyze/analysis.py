"""``merge analyze``: task-vector statistics of a recipe's ingredients, streamed like a merge.

The story: open every model's headers (a recipe's ``models:`` and ``base_model``, or models
named on the command line), pick the tensors all of them share, then read one tensor at a
time from each model (:class:`~mergekit_like.io.reader.TensorReader`), subtract the base's,
and add that tensor's statistics (:func:`~mergekit_like.analyze.stats.tensor_stats`) to the
whole model's, its layer's and its kind's. Peak memory is one tensor of every model, not
whole models.

Example::

    models = models_from_recipe(load_recipe(Path("recipe.yaml")))
    result = analyze(models, densities=(0.1, 0.2, 0.5, 1.0))
    result["overall"]["cosine"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.analyze.kinds import KINDS, layer_key, tensor_kind
from mergekit_like.analyze.stats import MAX_MODELS, GroupStats, tensor_stats
from mergekit_like.errors import MergeError, Problem

if TYPE_CHECKING:
    from mergekit_like.io.catalog import ModelCatalog
    from mergekit_like.recipe.loading import LoadedRecipe

DEFAULT_DENSITIES = (0.1, 0.2, 0.5, 1.0)
_FLOATS = {"F64", "F32", "F16", "BF16"}


@dataclass(frozen=True)
class AnalyzeModels:
    """The base model and the ingredients to compare, each with the field that named it."""

    base: tuple[str, str]  # (reference, field), e.g. ("org/base", "base_model")
    models: tuple[tuple[str, str], ...]
    recipe_dir: Path | None = None
    recipe: LoadedRecipe | None = None


def models_from_recipe(loaded: LoadedRecipe) -> AnalyzeModels:
    """The ingredients (``models:``, less the base if listed) and ``base_model`` of a recipe."""
    r = loaded.recipe
    if r.models is None:
        raise MergeError(
            loaded.problem(
                ("models",),
                "merge analyze needs a recipe with models: (slices: and modules: are not analysed)",
            )
        )
    if r.base_model is None:
        raise MergeError(
            loaded.problem(
                ("base_model",),
                "merge analyze needs a base_model: task vectors are each ingredient minus the base",
            )
        )
    models = tuple(
        (m.model, f"models[{i}].model") for i, m in enumerate(r.models) if m.model != r.base_model
    )
    if not models:
        raise MergeError(loaded.problem(("models",), "no ingredient other than the base_model"))
    return AnalyzeModels((r.base_model, "base_model"), models, loaded.path.parent, loaded)


def models_from_args(models: Sequence[str], base: str) -> AnalyzeModels:
    """The models named by ``--models A B ... --base X``."""
    refs = tuple((m, f"--models[{i}]") for i, m in enumerate(models) if m != base)
    if not refs:
        raise MergeError("--models: name at least one model other than --base")
    return AnalyzeModels((base, "--base"), refs)


def _open(which: AnalyzeModels) -> list[ModelCatalog]:
    from mergekit_like.io.catalog import open_model

    catalogs = []
    for ref, where in (which.base, *which.models):
        try:
            catalogs.append(open_model(ref, which.recipe_dir))
        except MergeError as exc:
            message = str(exc.problems[0]) if exc.problems else str(exc)
            if which.recipe is not None:
                loc: tuple[str | int, ...] = (
                    ("base_model",)
                    if where == "base_model"
                    else ("models", int(where.split("[")[1].split("]")[0]), "model")
                )
                raise MergeError(which.recipe.problem(loc, message)) from None
            raise MergeError(Problem(f"{where}: {message}")) from None
    return catalogs


def shared_tensors(catalogs: Sequence[ModelCatalog]) -> tuple[list[str], list[str]]:
    """(names analysed, names skipped): floating tensors every model has with one shape."""
    base = catalogs[0]
    kept, skipped = [], []
    for name, info in base.tensors.items():
        others = [c.tensors.get(name) for c in catalogs[1:]]
        if info.dtype in _FLOATS and all(
            o is not None and o.shape == info.shape and o.dtype in _FLOATS for o in others
        ):
            kept.append(name)
        else:
            skipped.append(name)
    return kept, skipped


def analyze(
    which: AnalyzeModels,
    densities: Sequence[float] = DEFAULT_DENSITIES,
    progress: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """Norms, cosines, angles and sign conflicts of the task vectors; JSON-ready data.
    ``out``: the report's folder, refused before any tensor is read if it overlaps a model."""
    from mergekit_like.io.reader import TensorReader

    dens = tuple(sorted(set(densities)))
    if not dens or any(not 0 < d <= 1 for d in dens):
        raise MergeError(f"--density: each density must be in (0, 1], got {list(densities)}")
    if len(which.models) > MAX_MODELS:
        where = "models" if which.recipe is not None else "--models"
        raise MergeError(
            f"{where}: merge analyze compares at most {MAX_MODELS} models, got {len(which.models)}"
        )
    catalogs = _open(which)
    if out is not None:
        _check_out(out, catalogs)
    names, skipped = shared_tensors(catalogs)
    if not names:
        raise MergeError(
            f"{which.base[1]}: no floating-point tensor is shared by the base and "
            "every model (same name and shape)"
        )
    k = len(catalogs) - 1
    overall = GroupStats(k, dens)
    layers: dict[tuple[str, int], GroupStats] = {}
    kinds: dict[str, GroupStats] = {}
    with TensorReader() as reader:
        for name in _bar(names, progress):
            one = tensor_stats(_deltas(reader, catalogs, name), dens)
            overall.add(one)
            kinds.setdefault(tensor_kind(name), GroupStats(k, dens)).add(one)
            key = layer_key(name)
            if key is not None:
                layers.setdefault(key, GroupStats(k, dens)).add(one)
    return {
        "base": which.base[0],
        "models": [m for m, _ in which.models],
        "densities": list(dens),
        "tensors_analysed": len(names),
        "tensors_skipped": skipped,
        "overall": overall.as_dict(),
        "kinds": {kd: kinds[kd].as_dict() for kd in KINDS if kd in kinds},
        "layers": [
            {"stack": head, "layer": i, **layers[(head, i)].as_dict()} for head, i in sorted(layers)
        ],
    }


def _check_out(out: Path, catalogs: Sequence[ModelCatalog]) -> None:
    """OUT (and its staging folder) may not be, lie inside or contain a model folder."""
    from mergekit_like.execute.staging import partial_dir

    for target in (out.resolve(), partial_dir(out).resolve()):
        for c in catalogs:
            src = c.path.resolve()
            if target == src or src in target.parents or target in src.parents:
                raise MergeError(
                    f"{out}: would write into model {c.ref!r} ({src}); choose an "
                    "output folder outside every model"
                )


def _deltas(reader: Any, catalogs: Sequence[ModelCatalog], name: str) -> Any:
    """K x n float64 task vectors of one tensor (ingredient minus base)."""
    import torch

    def read(c: ModelCatalog) -> torch.Tensor:
        return reader.read(c.tensors[name], name, dtype="float64").reshape(-1)

    base = read(catalogs[0])
    return torch.stack([read(c) - base for c in catalogs[1:]])


def _bar(items: list[str], progress: bool) -> Any:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="analyze", unit="tensor", leave=False)
