"""Bytes a `merge plan` of a hub recipe transfers, against a fake hub on 127.0.0.1.

    python bench/hub_plan_bytes.py

Builds tiny models (three single-file, one sharded), serves them from tests/io/fake_hub.py,
runs `merge plan` on a four-model recipe from an empty cache and prints the weight-file
bytes served (headers only) against the size of the weight files.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergekit_like.cli import main  # noqa: E402
from mergekit_like.demo import make_family  # noqa: E402
from tests.io.fake_hub import FakeHub  # noqa: E402


def run() -> None:
    tmp = Path(tempfile.mkdtemp())
    family = make_family(tmp / "m", "llama", layers=4, hidden=64)
    sharded = make_family(tmp / "s", "llama", names=("x",), layers=4, hidden=64,
                          shard_size="100KB")
    with FakeHub() as hub:
        for name in ("base", "math", "code"):
            hub.add_repo(f"acme/{name}", family[name])
        hub.add_repo("acme/sharded", sharded["x"])
        os.environ.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp / "cache"),
                          HF_HUB_OFFLINE="0", HF_HUB_DISABLE_PROGRESS_BARS="1")
        recipe = tmp / "hub.yaml"
        recipe.write_text("merge_method: linear\nmodels:\n" + "".join(
            f"  - model: acme/{n}\n    parameters: {{weight: 1.0}}\n"
            for n in ("base", "math", "code", "sharded")))
        assert main(["plan", str(recipe), "--summary"]) == 0
        weights = sum(len(d) for r in hub.repos.values() for n, d in r.files.items()
                      if n.endswith(".safetensors"))
        files = sum(1 for r in hub.repos.values() for n in r.files if n.endswith(".safetensors"))
        print(f"merge plan, 4 hub models ({files} safetensors files, {weights:,} bytes): "
              f"{hub.weight_bytes():,} weight-file bytes transferred (headers only), "
              f"{sum(hub.served.values()):,} bytes in all")


if __name__ == "__main__":
    run()
