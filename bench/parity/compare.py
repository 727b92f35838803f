"""Tensor-by-tensor comparison of two output folders (mergekit's and ours)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder, from one file or all shards of the index."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def layer_count(folder: Path) -> int | None:
    cfg = folder / "config.json"
    if not cfg.exists():
        return None
    return json.loads(cfg.read_text()).get("num_hidden_layers")


@dataclass
class TensorDiff:
    """How one tensor differs: entries that differ and the largest absolute difference."""

    name: str
    shape: list[int]
    dtype_ours: str
    dtype_mk: str
    differing: int
    max_abs: float
    numel: int


@dataclass
class Result:
    """The comparison of one case on one family."""

    case: str
    method: str
    family: str
    dtype: str
    layout: str
    random: bool
    status: str = "ok"  # ok | mk-failed | ours-failed | both-failed | not-in-ours
    message: str = ""
    tensors: int = 0
    differing_tensors: int = 0
    differing_entries: int = 0
    entries: int = 0
    max_abs: float = 0.0
    only_mk: list[str] = field(default_factory=list)
    only_ours: list[str] = field(default_factory=list)
    dtype_mismatch: list[str] = field(default_factory=list)
    layers_mk: int | None = None
    layers_ours: int | None = None
    worst: list[TensorDiff] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    secs_mk: float = 0.0
    secs_ours: float = 0.0

    def as_json(self) -> dict:
        return asdict(self)


def compare_exact(res: Result, mk: Path, ours: Path) -> None:
    """Fill ``res`` with the names, dtypes and per-entry differences of the two folders."""
    a, b = load_folder(mk), load_folder(ours)
    res.layers_mk, res.layers_ours = layer_count(mk), layer_count(ours)
    res.only_mk = sorted(set(a) - set(b))
    res.only_ours = sorted(set(b) - set(a))
    diffs: list[TensorDiff] = []
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        res.tensors += 1
        res.entries += x.numel()
        if x.dtype != y.dtype:
            res.dtype_mismatch.append(f"{name}: mk {x.dtype} ours {y.dtype}")
        if x.shape != y.shape:
            diffs.append(
                TensorDiff(
                    name,
                    list(x.shape),
                    str(y.dtype),
                    str(x.dtype),
                    x.numel(),
                    float("inf"),
                    x.numel(),
                )
            )
            continue
        xf, yf = x.double(), y.double()
        ne = ~((xf == yf) | (xf.isnan() & yf.isnan()))
        n = int(ne.sum())
        if n:
            m = float((xf - yf).abs()[ne].max())
            diffs.append(
                TensorDiff(name, list(x.shape), str(y.dtype), str(x.dtype), n, m, x.numel())
            )
    res.differing_tensors = len(diffs)
    res.differing_entries = sum(d.differing for d in diffs)
    res.max_abs = max((d.max_abs for d in diffs), default=0.0)
    res.worst = sorted(diffs, key=lambda d: -d.differing)[:8]


def compare_random(res: Result, mk: Path, ours: Path, base: Path) -> None:
    """Exact comparison (for the record) plus statistics of the task vector out - base.

    Per tensor of 1024 entries or more: the fraction of entries that moved from the base,
    the mean and standard deviation of out - base; reported as the worst relative gaps
    between the two tools.
    """
    compare_exact(res, mk, ours)
    a, b, c = load_folder(mk), load_folder(ours), load_folder(base)
    gaps = {"moved_frac": 0.0, "mean": 0.0, "std": 0.0, "l1": 0.0}
    totals = {
        "moved_mk": 0,
        "moved_ours": 0,
        "n": 0,
        "l1_mk": 0.0,
        "l1_ours": 0.0,
        "sign_agree": 0,
        "sign_both": 0,
    }
    for name in sorted(set(a) & set(b) & set(c)):
        if a[name].shape != c[name].shape or a[name].shape != b[name].shape:
            continue
        base_t = c[name].double()
        da, db = a[name].double() - base_t, b[name].double() - base_t
        ma, mb = da != 0, db != 0
        totals["moved_mk"] += int(ma.sum())
        totals["moved_ours"] += int(mb.sum())
        totals["n"] += da.numel()
        totals["l1_mk"] += float(da.abs().sum())
        totals["l1_ours"] += float(db.abs().sum())
        both = ma & mb
        totals["sign_both"] += int(both.sum())
        totals["sign_agree"] += int((da.sign() == db.sign())[both].sum())
        if da.numel() < 1024:  # per-tensor gaps only where the sample is large enough
            continue
        fa, fb = float(ma.double().mean()), float(mb.double().mean())
        gaps["moved_frac"] = max(gaps["moved_frac"], abs(fa - fb))
        sa, sb = float(da.std()), float(db.std())
        gaps["std"] = max(gaps["std"], abs(sa - sb) / max(sa, 1e-30))
        gaps["mean"] = max(gaps["mean"], abs(float(da.mean()) - float(db.mean())) / max(sa, 1e-30))
        la, lb = float(da.abs().sum()), float(db.abs().sum())
        gaps["l1"] = max(gaps["l1"], abs(la - lb) / max(la, 1e-30))
    n = max(totals["n"], 1)
    res.stats = {
        "moved_frac_mk": totals["moved_mk"] / n,
        "moved_frac_ours": totals["moved_ours"] / n,
        "l1_ratio_ours_over_mk": totals["l1_ours"] / max(totals["l1_mk"], 1e-30),
        "sign_agreement": totals["sign_agree"] / max(totals["sign_both"], 1),
        "max_gap_moved_frac": gaps["moved_frac"],
        "max_rel_gap_std": gaps["std"],
        "max_gap_mean_in_std": gaps["mean"],
        "max_rel_gap_l1": gaps["l1"],
    }
