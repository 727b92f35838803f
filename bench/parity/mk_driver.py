"""Run many mergekit configs in one process (mergekit's own venv runs this file).

    MK_VENV/bin/python mk_driver.py jobs.json results.json

``jobs.json``: a list of ``{"config": path, "out": path}``. Each job does what
``mergekit-yaml CONFIG OUT --random-seed SEED`` does (the same ``run_merge`` call with the
default options), without paying the interpreter's start-up for every config.
Imports only mergekit and its dependencies, never mergekit_like.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback


def main() -> None:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    jobs = json.load(open(sys.argv[1]))
    results = []
    for job in jobs:
        start = time.perf_counter()
        shutil.rmtree(job["out"], ignore_errors=True)
        try:
            text = open(job["config"], encoding="utf-8").read()
            config = MergeConfiguration.model_validate(yaml.safe_load(text))
            options = MergeOptions(
                random_seed=job.get("seed", 0), quiet=True, copy_tokenizer=False
            )  # the models have no tokenizer
            options.apply_global_options()
            run_merge(config, job["out"], options=options, config_source=text)
            results.append({"ok": True, "secs": time.perf_counter() - start})
        except Exception as exc:  # recorded per job; the next job still runs
            tail = traceback.format_exc().strip().splitlines()[-3:]
            results.append(
                {
                    "ok": False,
                    "secs": time.perf_counter() - start,
                    "error": f"{type(exc).__name__}: {exc}"[:400],
                    "tail": tail,
                }
            )
    json.dump(results, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
