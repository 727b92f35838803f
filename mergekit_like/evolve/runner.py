"""``merge evolve CONFIG OUT``, start to end.

Load and check the config, plan the ingredients once (their layer count sizes the genome),
run CMA-ES in OUT's staging folder (each candidate merged into a scratch folder there and
scored, serially or on Ray), then write the best candidate as an ordinary model folder
with its recipe (``evolve_recipe.yaml``, which ``merge`` reproduces bit for bit) and the
report. An interrupted search keeps its staging folder; ``--resume`` continues it.

Example::

    run_evolve(Path("evolve.yaml"), Path("out"), EvolveOptions(seed=0))
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mergekit_like.errors import Interrupted, MergeError
from mergekit_like.evolve.candidates import Job, RayPool, SerialPool, evaluate_folder
from mergekit_like.evolve.config import EvolveConfig, load_evolve_config
from mergekit_like.evolve.genome import Genome
from mergekit_like.evolve.report import write_report
from mergekit_like.evolve.search import (
    STATE,
    fingerprint,
    load_state,
    new_state,
    run_search,
)
from mergekit_like.execute.staging import OWNER, StagingLock, partial_dir

RECIPE = "evolve_recipe.yaml"
SCRATCH = "candidates"


@dataclass(frozen=True)
class EvolveOptions:
    """The command line's options of ``merge evolve``."""

    device: str = "cpu"
    seed: int = 0  # --seed of random methods (dare_ties), as `merge`
    force: bool = False
    resume: bool = False
    allow_code: bool = False
    ray: str | None = None  # None: serial; "local", "auto" or an address
    quiet: bool = False
    overrides: tuple[str, ...] = ()
    #: called after each generation with its report entry (tests stop a run here)
    on_generation: Callable[[dict[str, Any]], None] | None = None


def run_evolve(config_path: Path, out: Path, options: EvolveOptions) -> dict[str, Any]:
    """Run a ``merge evolve`` config into ``out``; returns the report data."""
    cfg = load_evolve_config(config_path, options.overrides)
    if cfg.evaluation.python is not None and not options.allow_code:
        from mergekit_like.soups.evaluation import load_python

        load_python(cfg.evaluation.python, False, config_path.parent)  # raises
    config_path = config_path.resolve()
    genome = Genome(cfg.genome, _num_layers(cfg, config_path, out))
    cfg = _absolute_data(cfg, config_path.parent)
    x0 = genome.initial(cfg.random_init, cfg.search.seed)
    key = fingerprint([cfg.model_dump(mode="json"), options.seed, str(config_path)])
    with evolve_staging(out, options.force, options.resume) as tmp:
        state = load_state(tmp, key) if options.resume else None
        if state is None:
            state = new_state(x0, cfg.search, key)
        elif not options.quiet:
            print(f"resuming after generation {len(state.generations) - 1}")
        pool = RayPool(options.ray) if options.ray else SerialPool()
        try:
            stopped = run_search(state, _evaluator(cfg, genome, config_path, tmp, options, pool),
                                 cfg.evaluation.higher_better, cfg.search.generations, tmp,
                                 _progress(cfg, options))
        finally:
            if isinstance(pool, RayPool):
                pool.close()
        assert state.best is not None
        data = _write_best(cfg, genome, state, config_path, tmp, options)
        data |= {"stopped": stopped, "generations": state.generations}
        write_report(data, tmp, cfg.plots)
        (tmp / STATE).unlink()
        shutil.rmtree(tmp / SCRATCH, ignore_errors=True)
    if not options.quiet:
        b = data["best"]
        print(f"wrote {out}: best val {b['val']:.6g} (test {b['test']}), {RECIPE}, "
              "evolve_report.md")
    return data


def _num_layers(cfg: EvolveConfig, config_path: Path, out: Path) -> int:
    """Plan the ingredients once (checks them, and OUT against them): their layer count."""
    from mergekit_like.execute.output import check_output_path
    from mergekit_like.plan.build import build_plan
    from mergekit_like.recipe.loading import LoadedRecipe
    from mergekit_like.recipe.models import Recipe

    g = cfg.genome
    refs = [*g.models, *([g.base_model] if g.base_model and g.base_model not in g.models
                         else [])]
    data = {"merge_method": "linear", "models": [{"model": r, "parameters": {"weight": 1.0}}
                                                 for r in refs]}
    plan = build_plan(LoadedRecipe(Recipe.model_validate(data), config_path, data))
    check_output_path(plan, out)
    return plan.output.num_layers


def _absolute_data(cfg: EvolveConfig, config_dir: Path) -> EvolveConfig:
    """The config with the evaluation's data files made absolute (Ray workers' folders
    differ from ours)."""
    from mergekit_like.soups.data import find_data

    ev = cfg.evaluation
    update = {k: str(find_data(getattr(ev, k), config_dir).resolve())
              for k in ("data", "test_data") if getattr(ev, k) is not None}
    return cfg.model_copy(update={"evaluation": ev.model_copy(update=update)})


def _evaluator(cfg: EvolveConfig, genome: Genome, config_path: Path, tmp: Path,
               options: EvolveOptions, pool: SerialPool | RayPool) -> Any:
    sys_path = (str(Path.cwd()), str(config_path.parent))

    def evaluate(gen: int, xs: list[np.ndarray]) -> list[Any]:
        jobs = [Job(genome.recipe_data(x, cfg.dtype, cfg.out_dtype), config_path,
                    tmp / SCRATCH / f"g{gen:04d}-c{i:03d}", cfg.evaluation, options.allow_code,
                    options.device, options.seed, cfg.search.threads, sys_path)
                for i, x in enumerate(xs)]
        return pool.map(jobs)

    return evaluate


def _progress(cfg: EvolveConfig, options: EvolveOptions) -> Callable[[dict[str, Any]], None]:
    def report(entry: dict[str, Any]) -> None:
        if not options.quiet:
            print(f"generation {entry['generation'] + 1}/{cfg.search.generations}: best val "
                  f"{entry['best']['val']:.6g}, best so far {entry['best_so_far']:.6g} "
                  f"({len(entry['candidates'])} candidates)", flush=True)
        if options.on_generation is not None:
            options.on_generation(entry)

    return report


def best_recipe_yaml(genome: Genome, cfg: EvolveConfig, x: np.ndarray, config_dir: Path,
                     header: str) -> str:
    """The chosen recipe as YAML, local model paths made absolute (it may be run anywhere)."""
    from mergekit_like.io.catalog import local_folder

    data = genome.recipe_data(x, cfg.dtype, cfg.out_dtype)

    def fix(ref: str) -> str:
        found = local_folder(ref, config_dir)
        return str(found.resolve()) if found is not None else ref

    for entry in [*data.get("models", []),
                  *(s for sl in data.get("slices", []) for s in sl["sources"])]:
        entry["model"] = fix(entry["model"])
    if "base_model" in data:
        data["base_model"] = fix(data["base_model"])
    return header + yaml.safe_dump(data, sort_keys=False)


def _write_best(cfg: EvolveConfig, genome: Genome, state: Any, config_path: Path, tmp: Path,
                options: EvolveOptions) -> dict[str, Any]:
    """Write the best candidate's recipe, merge it from that file, score it on val and test."""
    from mergekit_like.plan.build import build_plan
    from mergekit_like.recipe.loading import load_recipe
    from mergekit_like.run import MergeOptions, write_model

    best = state.best
    x = np.asarray(best["x"])
    header = (f"# merge evolve: the best of {state.es.countevals} candidates (generation "
              f"{best['generation']}, candidate {best['candidate']}, val {best['val']:.6g})\n"
              f"# reproduce: merge {RECIPE} OUT --seed {options.seed}\n")
    (tmp / RECIPE).write_text(best_recipe_yaml(genome, cfg, x, config_path.parent, header))
    plan = build_plan(load_recipe(tmp / RECIPE))
    inner = tmp / "model"
    write_model(plan, inner, MergeOptions(device=options.device, seed=options.seed, quiet=True))
    for item in inner.iterdir():
        item.rename(tmp / item.name)
    inner.rmdir()
    scores = {s: evaluate_folder(tmp, cfg.evaluation, config_path.parent, options.device,
                                 options.allow_code, s) for s in ("val", "test")}
    chosen = {**best, "parameters": genome.named_values(x)}
    for s, score in scores.items():
        chosen[s] = None if score is None else score.value
        chosen[f"{s}_loss"] = None if score is None else score.loss
    return {"merge_method": cfg.genome.merge_method, "parameters": genome.size,
            "layer_groups": genome.groups, "seed": cfg.search.seed, "merge_seed": options.seed,
            "higher_is_better": cfg.evaluation.higher_better,
            "metric": cfg.evaluation.metric if cfg.evaluation.task == "classification"
            else (cfg.evaluation.task or "score"),
            "evaluations": int(state.es.countevals), "recipe": RECIPE, "best": chosen}


@contextmanager
def evolve_staging(out: Path, force: bool, resume: bool) -> Iterator[Path]:
    """OUT's locked staging folder, published to OUT when the body succeeds. When it fails
    after a generation was saved, the folder is kept for ``--resume``."""
    if out.exists() and not force:
        raise MergeError(f"{out}: already exists; pass --force to replace it")
    tmp = partial_dir(out)
    lock = StagingLock.take(out, tmp)
    try:
        left = [p for p in tmp.iterdir() if p.name != OWNER]
        if left and not resume:
            if not force:
                raise MergeError(f"{tmp}: holds an interrupted search; rerun with --resume to "
                                 "continue it, or --force to start over")
            for p in left:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        try:
            yield tmp
        except (KeyboardInterrupt, Interrupted):
            if (tmp / STATE).is_file():
                raise Interrupted(f"interrupted; the search is kept in {tmp}: rerun the same "
                                  "command with --resume to continue it") from None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except BaseException:
            if not (tmp / STATE).is_file():  # else kept: --resume continues the search
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        _publish(out, tmp, force)
    finally:
        lock.release()


def _publish(out: Path, tmp: Path, force: bool) -> None:
    (tmp / OWNER).unlink(missing_ok=True)
    if out.exists() and force:
        shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
    tmp.rename(out)
