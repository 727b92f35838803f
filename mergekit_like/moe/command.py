"""``merge moe CONFIG OUT``: the command line of a MoE build, a thin adapter over
:func:`mergekit_like.moe.build.build_moe`.

``merge CONFIG OUT`` comes here too when CONFIG is a mergekit-moe config (it has
``experts`` or ``gate_mode``), with the options ``merge`` takes that apply.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mergekit_like.errors import MergeError

ALL_SAME_FLAG = "--i-understand-this-is-not-useful-without-training"


def moe_parser() -> argparse.ArgumentParser:
    """The options of ``merge moe`` (mergekit-moe's that apply here)."""
    p = argparse.ArgumentParser(
        prog="merge moe",
        description="Build a mixture of experts from a mergekit-moe "
        "config (experts, gate_mode, ...).",
    )
    p.add_argument("config", type=Path, help="mergekit-moe config YAML file")
    p.add_argument("out", type=Path, help="output folder (a Hugging Face model)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. experts_per_token=1")
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "auto"),
        help="where the router's hidden states are computed (default cpu)",
    )
    p.add_argument("--out-shard-size", default="5GB", help="largest output shard (default 5GB)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of random gates and expert noise (default 0)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no summary line")
    p.add_argument("--offline", action="store_true", help="no download of hub models")
    p.add_argument(
        "--no-copy-tokenizer",
        dest="copy_tokenizer",
        action="store_false",
        help="write no tokenizer files",
    )
    p.add_argument(
        "--no-model-card",
        dest="write_model_card",
        action="store_false",
        help="write no README.md model card",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the base tokenizer's own Python code (auto_map) run",
    )
    p.add_argument(
        ALL_SAME_FLAG,
        dest="allow_all_same",
        action="store_true",
        help="build even when every expert is the same model",
    )
    return p


def moe_main(argv: Sequence[str]) -> int:
    """``merge moe ...``: parse, load, build; returns the exit code (errors raise)."""
    ns = moe_parser().parse_intermixed_args(list(argv))
    return run_moe(ns.config, ns.out, ns.overrides, ns)


def run_moe(config: Path, out: Path, overrides: Sequence[str], ns: argparse.Namespace) -> int:
    """Build ``config`` into ``out`` with the options in ``ns`` (``merge moe``'s or
    ``merge``'s namespace: options one of them lacks take their defaults)."""
    from mergekit_like.io.out_path import check_out_path
    from mergekit_like.io.writer import parse_size
    from mergekit_like.moe.config import load_moe_config

    try:
        shard = parse_size(ns.out_shard_size)
    except ValueError as exc:
        raise MergeError(f"--out-shard-size: {exc}") from None
    check_out_path(out)
    loaded = load_moe_config(config, overrides, getattr(ns, "allow_all_same", False))
    from mergekit_like.moe.build import MoeOptions, build_moe

    options = MoeOptions(
        device=ns.device,
        seed=ns.seed,
        out_shard_bytes=shard,
        force=ns.force,
        copy_tokenizer=ns.copy_tokenizer,
        write_model_card=ns.write_model_card,
        trust_remote_code=ns.trust_remote_code,
        offline=ns.offline,
        quiet=ns.quiet,
    )
    build_moe(loaded, out, options)
    return 0
