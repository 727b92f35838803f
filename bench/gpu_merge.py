"""``merge`` on a GPU, recording torch's peak GPU memory: ``gpu_merge.py PEAK_FILE ARGS...``.

Runs ``mergekit_like.cli.main(ARGS)`` in this process, then writes to PEAK_FILE the most
GPU memory torch's caching allocator reserved and the most its tensors took, in bytes
(memory outside the allocator, such as the CUDA context, is in neither). Used by
bench_merge.py for runs with ``--extra="--device cuda ..."``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    import torch

    from mergekit_like.cli import main as merge

    code = merge(sys.argv[2:])
    Path(sys.argv[1]).write_text(
        f"{torch.cuda.max_memory_reserved()} {torch.cuda.max_memory_allocated()}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
