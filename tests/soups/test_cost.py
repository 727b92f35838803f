"""Candidate costs (build and evaluation time, peak RSS) and the reuse behind them: one model
object for every candidate, ingredients kept in memory only within the memory budget."""

from __future__ import annotations

import functools
import json
import sys
import time

import pytest

from mergekit_like.soups import runner
from mergekit_like.soups.cost import Stopwatch, peak_rss_bytes
from tests.conftest import load_tensors, write_recipe
from tests.soups.conftest import COST_KEYS, assert_costs, soup_recipe

BIASES = [0.75, 0.5, 1.0, 0.625]  # greedy tries 0, 3, 1, 2 and keeps [0, 3]


def run_greedy(tmp_path, run_cli, models, soup=""):
    recipe = write_recipe(tmp_path, soup_recipe("greedy_soup", models, soup=soup))
    out = tmp_path / "out"
    res = run_cli(recipe, out, "--quiet", "--allow-code")
    assert res.code == 0, res.err
    return out, json.loads((out / "soup_report.json").read_text())


def float_bytes(folder) -> tuple[int, int]:
    """(number of tensors, bytes of one float32 copy) of a model folder."""
    tensors = load_tensors(folder)
    return len(tensors), sum(4 * t.numel() for t in tensors.values())


def test_greedy_loads_the_model_once_and_reports_each_candidates_cost(
        tmp_path, ingredients, run_cli, monkeypatch):
    from transformers import ViTForImageClassification

    models = ingredients(BIASES)  # built before counting
    inits, loads = [], []
    init = ViTForImageClassification.__init__

    @functools.wraps(init)
    def counting_init(self, *args, **kwargs):
        inits.append(1)
        init(self, *args, **kwargs)

    def counting_load(*args, **kwargs):
        loads.append(args)
        return load_model(*args, **kwargs)

    load_model = runner.load_model
    monkeypatch.setattr(ViTForImageClassification, "__init__", counting_init)
    monkeypatch.setattr(runner, "load_model", counting_load)
    out, report = run_greedy(tmp_path, run_cli, models)
    # 4 individual scores + 3 greedy steps + uniform curve + final: one model object
    assert len(loads) == 1 and len(inits) == 1
    steps = report["details"]["steps"]
    assert [s["accepted"] for s in steps] == [True, True, False, False]
    assert_costs(steps)
    assert_costs(report["ingredients"])
    # step 1 is the best ingredient alone: its cost is that of scoring it
    first = next(i for i in report["ingredients"] if i["name"] == steps[0]["ingredient"])
    assert {k: steps[0][k] for k in COST_KEYS} == {k: first[k] for k in COST_KEYS}
    # peak RSS is the peak so far: it never falls from one step to the next
    rss = [s["peak_rss_bytes"] for s in steps[1:]]
    assert rss == sorted(rss)
    assert report["resources"]["peak_rss_bytes"] >= rss[-1]
    greedy_row = next(r for r in report["table"] if r["name"] == "greedy soup")
    assert_costs([greedy_row])
    # every ingredient fits the default 4GiB: each tensor of each is read from disk once
    count, _ = float_bytes(models[0])
    assert report["resources"]["ingredients_in_memory"] == [str(m) for m in models]
    assert report["resources"]["tensors_read_from_disk"] == 4 * count
    md = (out / "soup_report.md").read_text()
    assert "| soup size | build s | eval s | peak RSS MiB |" in md
    s = steps[2]
    assert (f"| 3 | {s['ingredient']} | {s['val']:.4f} | no | 2 | {s['build_s']:.3f} | "
            f"{s['eval_s']:.3f} | {s['peak_rss_bytes'] / 2 ** 20:.1f} |") in md


@pytest.mark.parametrize(("kept", "budget"), [(2, "three and a half"), (0, "1KB")])
def test_ingredients_are_kept_in_memory_only_within_the_budget(tmp_path, ingredients, run_cli,
                                                               kept, budget):
    models = ingredients(BIASES)
    count, size = float_bytes(models[0])
    if budget == "three and a half":  # one running sum + two ingredients fit, not three
        budget = str(3 * size + size // 2)
    _, report = run_greedy(tmp_path, run_cli, models, soup=f"memory_budget: '{budget}'")
    res = report["resources"]
    # ingredients are read in the recipe's order first (their individual scores)
    assert res["ingredients_in_memory"] == [str(m) for m in models[:kept]]
    # those not kept are read again for every candidate that needs them
    assert res["tensors_read_from_disk"] > 4 * count
    assert report["details"]["soup"] == [str(models[0]), str(models[3])]
    assert_costs(report["details"]["steps"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_peak_rss_is_in_bytes():
    import os

    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = peak_rss_bytes()
    # the kernel's high-water mark may lag the live count by a few pages; KiB read as bytes
    # (or bytes scaled twice) would be off by a factor of 1024
    assert peak is not None and resident // 2 <= peak < 2 ** 40


def test_stopwatch_laps():
    watch = Stopwatch()
    time.sleep(0.02)
    first = watch.lap()
    second = watch.lap()
    assert first >= 0.02 and 0 <= second < first
