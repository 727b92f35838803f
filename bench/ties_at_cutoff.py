"""How many trimmed entries differ from mergekit's, on task vectors full of equal magnitudes.

    /work/venvs/mk/bin/python bench/ties_at_cutoff.py            # this checkout
    /work/venvs/mk/bin/python bench/ties_at_cutoff.py --repo /work/main

Run with a Python that has mergekit 0.1.5 installed (``pip install torch==2.13.0`` first,
then ``pip install mergekit==0.1.5``); ``--repo`` names the mergekit_like checkout to
compare. The task vectors are those of bfloat16 fine-tunes merged in float32: ``x - base``
of bfloat16 weights, where equal magnitudes are common, for 30 tensors of a small model's
shapes (one over 2^16 entries). For TIES (``magnitude``, density 0.4) and Model Breadcrumbs
(``magnitude_outliers``, density 0.5, gamma 0.05) it prints, per mergekit run, the tensors
and entries of ``delta * mask`` that differ:

- ``cpu``: mergekit as it runs on a CPU (torch's unstable sort there: libstdc++'s
  ``std::sort``, whose order among equal magnitudes no rule of positions reproduces);
- ``stable``: mergekit with its ``argsort``/``sort`` made stable, as torch sorts on CUDA.
"""

from __future__ import annotations

import argparse
import sys

import torch

SHAPES = [(64, 64), (64,), (128, 64), (64, 128), (256, 64), (64, 256), (32,)] * 4 + [
    (512, 256),
    (96, 64),
]


def task_vectors(seed: int = 0) -> list[torch.Tensor]:
    """``x - base`` in float32 of bfloat16 weights (a fine-tune's small steps)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in SHAPES[:30]:
        base = (torch.randn(shape, generator=gen) * 0.05).bfloat16()
        x = (base.float() + 0.002 * torch.randn(shape, generator=gen)).bfloat16()
        out.append(x.float() - base.float())
    return out


def stable_sorts(module) -> None:
    """Make ``module``'s ``torch.argsort`` and ``torch.sort`` stable (as on CUDA)."""

    class Stable:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def argsort(x, *args, **kwargs):
            return torch.argsort(x, *args, stable=True, **kwargs)

        @staticmethod
        def sort(x, *args, **kwargs):
            return torch.sort(x, *args, stable=True, **kwargs)

    module.torch = Stable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=".", help="the mergekit_like checkout to compare")
    args = parser.parse_args()
    sys.path.insert(0, args.repo)
    import mergekit.sparsify as mk

    from mergekit_like.methods.sparsify import magnitude_mask, outlier_mask

    deltas = task_vectors()
    ours = {
        "ties": [d * magnitude_mask(d, 0.4) for d in deltas],
        "breadcrumbs": [d * outlier_mask(d, 0.5, 0.05) for d in deltas],
    }
    runs = {}
    for run in ("cpu", "stable"):
        if run == "stable":
            stable_sorts(mk)
        runs[run] = {
            "ties": [mk.magnitude(d, 0.4) for d in deltas],
            "breadcrumbs": [mk.magnitude_outliers(d, 0.5, gamma=0.05) for d in deltas],
        }
    total = sum(d.numel() for d in deltas)
    print(f"{args.repo}: {len(deltas)} tensors, {total} entries")
    for method, mine in ours.items():
        for run, theirs in runs.items():
            diff = [int((a != b).sum()) for a, b in zip(mine, theirs[method], strict=True)]
            print(
                f"  {method:12s} vs mergekit {run:6s}: {sum(diff):5d} entries differ, "
                f"in {sum(d > 0 for d in diff)} of {len(diff)} tensors"
            )


if __name__ == "__main__":
    main()
