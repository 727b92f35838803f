"""The CMA-ES loop: ask for a generation, score it, tell, save the state; resumable.

The optimizer draws its samples from its own seeded generator (kept inside the pickled
optimizer), so the search is a function of the seed and the scores alone: the same seed
gives the same search, a search resumed from its saved state continues exactly as an
uninterrupted one, and scores computed on Ray give the serial run's search.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mergekit_like.errors import MergeError
from mergekit_like.evolve.candidates import Outcome
from mergekit_like.evolve.config import SearchConfig

STATE = "evolve_state.pkl"
WORST = 1e30  # the cost of a candidate whose score is not finite


class Randn:
    """``randn(*shape)`` from a seeded numpy Generator (picklable, so it resumes exactly)."""

    def __init__(self, seed: int) -> None:
        self.gen = np.random.Generator(np.random.PCG64(seed))

    def __call__(self, *shape: int) -> np.ndarray:
        return self.gen.standard_normal(shape)


@dataclass
class SearchState:
    """Everything a search needs to continue: the optimizer, the history, the best so far.

    ``generations`` holds one entry per finished generation (its candidates' scores and
    its best); ``best`` is the best candidate of all (the first of equal scores).
    """

    fingerprint: str
    es: Any
    generations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


def fingerprint(data: Any) -> str:
    """A short hash of what decides the search (config and seeds), checked on --resume."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_state(x0: np.ndarray, search: SearchConfig, print_: str) -> SearchState:
    """A fresh CMA-ES at ``x0`` with the search's step size, population and seed."""
    import cma

    opts: dict[str, Any] = {"seed": math.nan, "randn": Randn(search.seed), "verbose": -9,
                            "verb_log": 0, "verb_disp": 0}
    if search.popsize is not None:
        opts["popsize"] = search.popsize
    if search.max_fevals is not None:
        opts["maxfevals"] = search.max_fevals
    es = cma.CMAEvolutionStrategy(list(map(float, x0)), search.sigma0, opts)
    return SearchState(print_, es)


def save_state(state: SearchState, folder: Path) -> None:
    """Write the state atomically (a crash mid-write leaves the previous generation's)."""
    tmp = folder / f"{STATE}.tmp"
    tmp.write_bytes(pickle.dumps(state))
    os.replace(tmp, folder / STATE)


def load_state(folder: Path, expected: str) -> SearchState | None:
    """The saved state in ``folder`` (None when there is none); refuses another config's."""
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        state = pickle.loads(path.read_bytes())  # noqa: S301 - our own file, in our staging
    except Exception as exc:  # noqa: BLE001 - any damage reads as "cannot resume"
        raise MergeError(f"{path}: cannot read the saved search ({type(exc).__name__}); "
                         "rerun with --force to start over") from None
    if not isinstance(state, SearchState) or state.fingerprint != expected:
        raise MergeError(f"--resume: {path} is the state of a search with another config or "
                         "seed; rerun with that config, or with --force to start over")
    return state


Evaluate = Callable[[int, list[np.ndarray]], list[Outcome]]


def run_search(state: SearchState, evaluate: Evaluate, higher_is_better: bool,
               generations: int, folder: Path,
               on_generation: Callable[[dict[str, Any]], None] | None = None) -> str:
    """Run generations until ``generations`` are done or CMA-ES stops; returns why it
    stopped. The state is saved in ``folder`` after every generation."""
    es = state.es
    while len(state.generations) < generations:
        stop = es.stop()
        if stop:
            return ", ".join(sorted(stop))
        gen = len(state.generations)
        xs = es.ask()
        outcomes = evaluate(gen, xs)
        costs = [_cost(o.val, higher_is_better) for o in outcomes]
        es.tell(xs, costs)
        entry = _record(state, gen, xs, outcomes, costs)
        save_state(state, folder)
        if on_generation is not None:
            on_generation(entry)
    return "generations"


def _cost(value: float, higher_is_better: bool) -> float:
    cost = -value if higher_is_better else value
    return cost if math.isfinite(cost) else WORST


def _record(state: SearchState, gen: int, xs: list[np.ndarray], outcomes: list[Outcome],
            costs: list[float]) -> dict[str, Any]:
    """Add one generation to the history and update the best candidate."""
    k = min(range(len(costs)), key=lambda i: (costs[i], i))
    best = {"generation": gen, "candidate": k, "x": [float(v) for v in xs[k]],
            "val": outcomes[k].val, "val_loss": outcomes[k].loss, "cost": costs[k]}
    if state.best is None or best["cost"] < state.best["cost"]:
        state.best = best
    entry = {"generation": gen, "candidates": [
        {"val": o.val, "val_loss": o.loss, "merge_s": round(o.merge_s, 4),
         "eval_s": round(o.eval_s, 4)} for o in outcomes],
        "best": best, "best_so_far": state.best["val"],
        "evaluations": int(state.es.countevals), "sigma": float(state.es.sigma)}
    state.generations.append(entry)
    return entry
