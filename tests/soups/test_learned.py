"""learned_soup: softmax mixing coefficients by gradient descent on the held-out loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import load_tensors, write_recipe
from tests.soups.conftest import assert_costs, soup_recipe
from tests.soups.scorers import TEST_TARGET, VAL_TARGET

BIASES = [0.75, 0.5, 1.0]
LR, STEPS, TEMP = 0.5, 20, 2.0


def expected(biases, target=VAL_TARGET):
    """Gradient descent written out: L = (sum_j a_j b_j - t)^2, a = softmax(w / T),
    dL/dw_j = 2 (x - t) a_j (b_j - x) / T."""
    w = [0.0] * len(biases)
    losses = []
    for _ in range(STEPS):
        e = [math.exp(v / TEMP) for v in w]
        a = [v / sum(e) for v in e]
        x = sum(ai * bi for ai, bi in zip(a, biases, strict=True))
        losses.append((x - target) ** 2)
        w = [wj - LR * 2 * (x - target) * aj * (bj - x) / TEMP
             for wj, aj, bj in zip(w, a, biases, strict=True)]
    e = [math.exp(v / TEMP) for v in w]
    return [v / sum(e) for v in e], losses


def run(tmp_path, ingredients, run_cli, granularity):
    models = ingredients(BIASES)
    soup = f"granularity: {granularity}\noptimizer: sgd\nlr: {LR}\nsteps: {STEPS}\n" \
           f"temperature: {TEMP}"
    recipe = write_recipe(tmp_path, soup_recipe("learned_soup", models, "squared_error", soup))
    out = tmp_path / "out"
    res = run_cli(recipe, out, "--quiet", "--allow-code")
    assert res.code == 0, res.err
    return models, out, json.loads((out / "soup_report.json").read_text())


def test_coefficients_per_model(tmp_path, ingredients, run_cli):
    models, out, report = run(tmp_path, ingredients, run_cli, "model")
    cost = report["details"]["cost"]  # the run is one candidate: build, train, evaluate
    assert_costs([cost])
    assert cost["train_s"] > 0
    assert "| train s | build s | eval s | peak RSS MiB |" in (out / "soup_report.md").read_text()
    coef, losses = expected(BIASES)
    got = report["details"]["coefficients"]
    assert list(got) == [str(m) for m in models]
    torch.testing.assert_close(torch.tensor(list(got.values()), dtype=torch.float64),
                               torch.tensor(coef, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(report["details"]["loss_history"]),
                               torch.tensor(losses, dtype=torch.float32), rtol=1e-4, atol=1e-7)
    x = sum(c * b for c, b in zip(coef, BIASES, strict=True))
    row = next(r for r in report["table"] if r["name"] == "learned soup")
    assert row["val"] == pytest.approx((x - VAL_TARGET) ** 2, abs=1e-6)
    assert row["test"] == pytest.approx((x - TEST_TARGET) ** 2, abs=1e-6)
    ins = [load_tensors(m) for m in models]
    for name, t in load_tensors(out).items():
        want = sum(c * i[name] for c, i in zip(coef, ins, strict=True))
        torch.testing.assert_close(t, want, rtol=1e-4, atol=1e-5)


def test_coefficients_per_tensor(tmp_path, ingredients, run_cli):
    models, out, report = run(tmp_path, ingredients, run_cli, "tensor")
    coef, _ = expected(BIASES)
    got = report["details"]["coefficients"]
    torch.testing.assert_close(
        torch.tensor([got["classifier.bias"][str(m)] for m in models], dtype=torch.float64),
        torch.tensor(coef, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    # every other tensor has no gradient: it keeps the uniform start
    other = got["classifier.weight"]
    assert list(other.values()) == pytest.approx([1 / 3] * 3)
    ins = [load_tensors(m) for m in models]
    written = load_tensors(out)
    torch.testing.assert_close(
        written["classifier.bias"],
        sum(c * i["classifier.bias"] for c, i in zip(coef, ins, strict=True)),
        rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(written["classifier.weight"],
                               sum(i["classifier.weight"] for i in ins) / 3)
