"""Scoring one candidate: merge its recipe into a scratch folder, load it, score it, delete it.

A :class:`Job` is everything a candidate needs, as plain picklable values, so the same
:func:`score_candidate` runs in this process (serial) or as one Ray task per candidate on
any machine that sees the same paths. Every candidate is merged and scored from scratch,
with the same torch thread count, so a serial run and a Ray run give the same scores.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_like.errors import MergeError
from mergekit_like.recipe.soups import EvaluationConfig


@dataclass(frozen=True)
class Job:
    """One candidate to merge and score.

    Attributes:
        recipe: the candidate's recipe data (as :meth:`Genome.recipe_data` gives it).
        config_path: the evolve config file (relative model paths resolve from its folder).
        scratch: the folder to merge into (removed after scoring).
        evaluation: the evaluation block, its data path made absolute.
        allow_code: ``--allow-code`` (a custom scorer may run).
        device: the merge and evaluation device.
        seed: ``--seed`` of random methods (dare_ties).
        threads: torch CPU threads while merging and scoring.
        sys_path: folders put on ``sys.path`` first (where a custom scorer is imported from).
    """

    recipe: dict[str, Any]
    config_path: Path
    scratch: Path
    evaluation: EvaluationConfig
    allow_code: bool
    device: str = "cpu"
    seed: int = 0
    threads: int = 1
    sys_path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """A candidate's val score (and loss, when the evaluator gives one) and its timings."""

    val: float
    loss: float | None
    merge_s: float
    eval_s: float


def score_candidate(job: Job) -> Outcome:
    """Merge ``job.recipe`` into ``job.scratch``, score it on the val split, remove it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    added = [p for p in job.sys_path if p not in sys.path]
    sys.path[:0] = added
    try:
        start = time.perf_counter()
        write_candidate(job.recipe, job.config_path, job.scratch, job.device, job.seed)
        merged = time.perf_counter()
        score = evaluate_folder(job.scratch, job.evaluation, job.config_path.parent,
                                job.device, job.allow_code, "val")
        return Outcome(score.value, score.loss, merged - start, time.perf_counter() - merged)
    finally:
        torch.set_num_threads(threads)
        for p in added:
            sys.path.remove(p)
        shutil.rmtree(job.scratch, ignore_errors=True)


def write_candidate(recipe: dict[str, Any], config_path: Path, folder: Path, device: str,
                    seed: int) -> None:
    """Merge recipe data into ``folder`` (quietly, no model card)."""
    from mergekit_like.plan.build import build_plan
    from mergekit_like.recipe.loading import LoadedRecipe
    from mergekit_like.recipe.models import Recipe
    from mergekit_like.run import MergeOptions, write_model

    loaded = LoadedRecipe(Recipe.model_validate(recipe), config_path, recipe)
    plan = build_plan(loaded)
    write_model(plan, folder, MergeOptions(device=device, seed=seed, quiet=True, force=True,
                                           write_model_card=False))


def evaluate_folder(folder: Path, cfg: EvaluationConfig, config_dir: Path, device: str,
                    allow_code: bool, split: str) -> Any:
    """The :class:`~mergekit_like.soups.evaluation.Score` of a model folder on ``split``
    ('val' or 'test': the evaluation block's names for them)."""
    from mergekit_like.execute.device import resolve_device
    from mergekit_like.soups.evaluation import build_evaluator
    from mergekit_like.soups.ingredients import load_model

    device = resolve_device(cfg.device or device)
    model = load_model(folder, device)
    ev = build_evaluator(cfg, config_dir, model.main_input_name, folder, device, allow_code,
                         progress=False)
    name = cfg.val_split if split == "val" else ev.test_split
    if name is None:
        return None
    return ev.score(model, name)


class SerialPool:
    """Scores candidates one after another in this process."""

    def map(self, jobs: list[Job]) -> list[Outcome]:
        """Each job's outcome, in order."""
        return [score_candidate(j) for j in jobs]


class RayPool:
    """Scores candidates as Ray tasks, one task per candidate (results in job order)."""

    def __init__(self, address: str, num_cpus_per_task: float = 1.0) -> None:
        try:
            import ray
        except ImportError:
            raise MergeError("--ray: Ray is not installed; pip install 'mergekit_like[evolve]'"
                             ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                if address == "local":
                    ray.init(include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise MergeError(f"--ray {address}: cannot connect ({exc})") from None
            self._started = True
        self._task = ray.remote(num_cpus=num_cpus_per_task, max_retries=0)(score_candidate)

    def map(self, jobs: list[Job]) -> list[Outcome]:
        """Each job's outcome, in order; a task's MergeError is raised here as itself."""
        refs = [self._task.remote(j) for j in jobs]
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MergeError):
                raise cause from None
            raise

    def close(self) -> None:
        """Shut down a Ray this pool started (a Ray started by the caller is left running)."""
        if self._started:
            self._ray.shutdown()
