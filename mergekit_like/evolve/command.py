"""The ``merge evolve CONFIG OUT`` command line: a thin adapter over
:func:`mergekit_like.evolve.runner.run_evolve`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

RAY_HELP = ("score candidates on Ray, one task per candidate: 'local' starts a Ray on this "
            "machine, 'auto' joins the running cluster (RAY_ADDRESS or `ray start`), or give "
            "an address such as ray://head:10001; without it candidates are scored here, one "
            "after another")


def parser() -> argparse.ArgumentParser:
    """The options of ``merge evolve``."""
    p = argparse.ArgumentParser(
        prog="merge evolve", description="Search a merge's weights and densities with CMA-ES "
        "(mergekit-evolve's genome), scoring candidates with an evaluation: block.")
    p.add_argument("config", type=Path, help="evolve config YAML (genome:, evaluation:, "
                   "search:)")
    p.add_argument("out", type=Path, help="output folder: the best model, its recipe "
                   "(evolve_recipe.yaml) and the report")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. search.generations=4")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help=RAY_HELP)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="merge and evaluation device (default cpu)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of random merge methods (dare_ties); the search's seed is "
                        "search.seed")
    p.add_argument("--force", action="store_true", help="replace an existing OUT, or start "
                   "an interrupted search over")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search "
                   "from its last finished generation")
    p.add_argument("--allow-code", action="store_true",
                   help="allow the config's evaluation.python to run (custom scorer code)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str]) -> int:
    """Run ``merge evolve`` with its arguments (after the word ``evolve``)."""
    from mergekit_like.evolve.runner import EvolveOptions, run_evolve
    from mergekit_like.io.out_path import check_out_path

    ns = parser().parse_intermixed_args(list(argv))
    check_out_path(ns.out)
    run_evolve(ns.config, ns.out, EvolveOptions(
        device=ns.device, seed=ns.seed, force=ns.force, resume=ns.resume,
        allow_code=ns.allow_code, ray=ns.ray, quiet=ns.quiet, overrides=tuple(ns.overrides)))
    return 0
