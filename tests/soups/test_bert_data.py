"""The evaluation block as users meet it, on a tiny BERT sequence classifier with token-id
data: named columns, tokenizer-style input_ids, .jsonl/.csv/.npz token ids, and the errors
(text without a tokenizer, sequences longer than the model's positions)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_recipe
from tests.soups.bert import (
    POSITIONS,
    accuracy,
    make_berts,
    padded,
    save_word_tokenizer,
    token_rows,
)

N_VAL, N_TEST = 20, 14


@pytest.fixture(scope="module")
def berts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_berts(tmp_path_factory.mktemp("berts"))


ROWS = {"val": token_rows(N_VAL, 1), "test": token_rows(N_TEST, 2)}


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict]]:
    return ROWS


def _recipe(tmp_path: Path, models: list[Path], data: Path, extra: str = "") -> Path:
    lines = ["merge_method: greedy_soup", "models:"] + [f"  - model: {m}" for m in models]
    lines += ["evaluation:", "  task: classification", f"  data: {data}", "  batch_size: 6"]
    return write_recipe(tmp_path, "\n".join(lines) + "\n" + extra)


def _expected(berts: list[Path], rows: dict[str, list[dict]]) -> list[dict[str, float]]:
    out = []
    for m in berts:
        scores = {}
        for split, rs in rows.items():
            ids, mask = padded(rs)
            scores[split] = accuracy(m, ids, mask, [r["y"] for r in rs])
        out.append(scores)
    return out


def _check_scores(out: Path, berts: list[Path], rows: dict[str, list[dict]]) -> dict:
    report = json.loads((out / "soup_report.json").read_text())
    for got, want in zip(report["ingredients"], _expected(berts, rows), strict=True):
        assert got["val"] == pytest.approx(want["val"], abs=1e-9)
        assert got["test"] == pytest.approx(want["test"], abs=1e-9)
    return report


def test_jsonl_input_ids_and_attention_mask(tmp_path, berts, rows, run_cli):
    """Rows as a tokenizer stores them: input_ids and attention_mask lists, named labels."""
    data = tmp_path / "data.jsonl"
    with data.open("w") as f:
        for split, rs in rows.items():
            ids, mask = padded(rs)
            for i, r in enumerate(rs):
                f.write(
                    json.dumps(
                        {
                            "split": split,
                            "input_ids": ids[i].tolist(),
                            "attention_mask": mask[i].tolist(),
                            "y": r["y"],
                        }
                    )
                    + "\n"
                )
    res = run_cli(_recipe(tmp_path, berts, data, "  label_field: y\n"), tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    _check_scores(tmp_path / "out", berts, rows)


def test_jsonl_named_input_field_of_ragged_token_ids(tmp_path, berts, rows, run_cli):
    """input_field names a column of token-id lists of different lengths: padded with the
    config's pad_token_id, masked."""
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"split": s, "ids": r["ids"], "y": r["y"]}) + "\n"
            for s, rs in rows.items()
            for r in rs
        )
    )
    res = run_cli(
        _recipe(tmp_path, berts, data, "  input_field: ids\n  label_field: y\n"),
        tmp_path / "out",
        "--quiet",
    )
    assert res.code == 0, res.err
    _check_scores(tmp_path / "out", berts, rows)


def test_csv_token_ids(tmp_path, berts, rows, run_cli):
    """A .csv column of space-separated token ids."""
    data = tmp_path / "data.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "tokens", "label"])
        for s, rs in rows.items():
            w.writerows([s, " ".join(map(str, r["ids"])), r["y"]] for r in rs)
    res = run_cli(
        _recipe(tmp_path, berts, data, "  input_field: tokens\n"), tmp_path / "out", "--quiet"
    )
    assert res.code == 0, res.err
    _check_scores(tmp_path / "out", berts, rows)


def test_npz_input_ids(tmp_path, berts, rows, run_cli):
    """A .npz with <split>_input_ids, <split>_attention_mask and <split>_labels."""
    arrays = {}
    for s, rs in rows.items():
        arrays[f"{s}_input_ids"], arrays[f"{s}_attention_mask"] = padded(rs)
        arrays[f"{s}_labels"] = np.array([r["y"] for r in rs])
    np.savez(tmp_path / "data.npz", **arrays)
    res = run_cli(_recipe(tmp_path, berts, tmp_path / "data.npz"), tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    _check_scores(tmp_path / "out", berts, rows)


def test_text_without_a_tokenizer_is_an_error(tmp_path, berts, run_cli):
    """No ingredient has a tokenizer: text data must not be scored with an empty one."""
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"split": s, "text": "w1 w2 w3", "label": 1}) + "\n"
            for s in ("val", "test")
            for _ in range(4)
        )
    )
    res = run_cli(_recipe(tmp_path, berts, data, "  max_length: 8\n"), tmp_path / "out", "--quiet")
    assert res.code == 2, res.out
    err = res.err.strip().splitlines()
    assert len(err) == 1 and "tokenizer" in err[0] and "evaluation" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def berts_with_tokenizer(tmp_path, berts) -> list[Path]:
    copies = []
    for m in berts:
        copies.append(tmp_path / "models" / m.name)
        shutil.copytree(m, copies[-1])
    save_word_tokenizer(copies[0])
    return copies


def test_text_with_a_tokenizer_is_scored(tmp_path, berts_with_tokenizer, run_cli):
    from transformers import AutoTokenizer

    models = berts_with_tokenizer
    texts = {
        s: [(" ".join(f"w{(3 * i + j) % 30}" for j in range(1 + i % 5)), i % 3) for i in range(n)]
        for s, n in (("val", 9), ("test", 5))
    }
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"split": s, "sentence": t, "label": y}) + "\n"
            for s, ts in texts.items()
            for t, y in ts
        )
    )
    res = run_cli(
        _recipe(tmp_path, models, data, "  text_field: sentence\n  max_length: 8\n"),
        tmp_path / "out",
        "--quiet",
    )
    assert res.code == 0, res.err
    tok = AutoTokenizer.from_pretrained(models[0])
    report = json.loads((tmp_path / "out" / "soup_report.json").read_text())
    for s, ts in texts.items():
        enc = tok([t for t, _ in ts], padding="max_length", max_length=8, return_tensors="np")
        want = accuracy(models[1], enc["input_ids"], enc["attention_mask"], [y for _, y in ts])
        assert report["ingredients"][1][s] == pytest.approx(want, abs=1e-9)


def test_max_length_beyond_the_models_positions(tmp_path, berts_with_tokenizer, run_cli):
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"split": s, "text": "w1 w2", "label": 0}) + "\n" for s in ("val", "test")
        )
    )
    res = run_cli(
        _recipe(tmp_path, berts_with_tokenizer, data, "  max_length: 64\n"),
        tmp_path / "out",
        "--quiet",
    )
    assert res.code == 2, res.out
    err = res.err.strip().splitlines()
    assert len(err) == 1 and "evaluation.max_length" in err[0] and str(POSITIONS) in err[0], err


def test_token_ids_longer_than_the_models_positions(tmp_path, berts, run_cli):
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"split": s, "input_ids": list(range(4, 4 + 20)), "label": 0}) + "\n"
            for s in ("val", "test")
        )
    )
    res = run_cli(_recipe(tmp_path, berts, data), tmp_path / "out", "--quiet")
    assert res.code == 2, res.out
    err = res.err.strip().splitlines()
    assert len(err) == 1 and "evaluation.data" in err[0] and str(POSITIONS) in err[0], err


def _npz(tmp_path: Path, rows: dict[str, list[dict]]) -> Path:
    arrays = {}
    for s, rs in rows.items():
        arrays[f"{s}_input_ids"], arrays[f"{s}_attention_mask"] = padded(rs)
        arrays[f"{s}_labels"] = np.array([r["y"] for r in rs])
    np.savez(tmp_path / "data.npz", **arrays)
    return tmp_path / "data.npz"


def _python_recipe(
    tmp_path: Path, models: list[Path], method: str, evaluation: str, soup: str = ""
) -> Path:
    lines = [f"merge_method: {method}", "models:"] + [f"  - model: {m}" for m in models]
    lines += [
        "evaluation:",
        "  python: tests.soups.bert_scorers:accuracy",
        f"  data: {_npz(tmp_path, ROWS)}",
    ]
    return write_recipe(tmp_path, "\n".join(lines) + "\n" + evaluation + soup)


def test_custom_scorer_gets_data_batch_size_device_and_threads(tmp_path, berts, run_cli):
    import torch

    from tests.soups import bert_scorers

    bert_scorers.CALLS.clear()
    before = torch.get_num_threads()
    recipe = _python_recipe(
        tmp_path, berts, "greedy_soup", "  batch_size: 5\n  threads: 1\n  device: cpu\n"
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--allow-code")
    assert res.code == 0, res.err
    calls = bert_scorers.CALLS
    assert calls and all(
        c["batch_size"] == 5 and c["device"] == "cpu" and c["threads"] == 1 for c in calls
    )
    assert {(c["split"], c["n"]) for c in calls} == {("val", N_VAL), ("test", N_TEST)}
    assert torch.get_num_threads() == before  # restored after the run
    _check_scores(tmp_path / "out", berts, ROWS)
    report = json.loads((tmp_path / "out" / "soup_report.json").read_text())
    assert report["ingredients"][0]["val_examples"] == N_VAL
    assert report["ingredients"][0]["test_examples"] == N_TEST


def test_learned_soup_trains_on_python_loss(tmp_path, berts, run_cli):
    from tests.soups import bert_scorers

    bert_scorers.LOSSES.clear()
    recipe = _python_recipe(
        tmp_path,
        berts,
        "learned_soup",
        "  python_loss: tests.soups.bert_scorers:train_loss\n  batch_size: 8\n",
        "soup: {steps: 3, plots: false}\n",
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--allow-code")
    assert res.code == 0, res.err
    report = json.loads((tmp_path / "out" / "soup_report.json").read_text())
    losses = bert_scorers.LOSSES
    assert [x["n"] for x in losses] == [8, 8, 4]  # batches of the 20 val examples
    assert report["details"]["loss_history"] == pytest.approx([x["loss"] for x in losses])
    assert "data" in losses[0]["keys"] and "batch_size" in losses[0]["keys"]


def test_datasets_folder(tmp_path, berts, rows, run_cli):
    datasets = pytest.importorskip("datasets")
    parts = {}
    for s, rs in rows.items():
        ids, mask = padded(rs)
        parts[s] = datasets.Dataset.from_dict(
            {
                "input_ids": ids.tolist(),
                "attention_mask": mask.tolist(),
                "label": [r["y"] for r in rs],
            }
        )
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "ds"))
    res = run_cli(_recipe(tmp_path, berts, tmp_path / "ds"), tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    _check_scores(tmp_path / "out", berts, rows)


def test_datasets_folder_without_the_package_is_one_line(tmp_path, berts, run_cli, monkeypatch):
    import sys

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "dataset_dict.json").write_text('{"splits": ["val", "test"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    res = run_cli(_recipe(tmp_path, berts, folder), tmp_path / "out", "--quiet")
    assert res.code == 2, res.out
    err = res.err.strip().splitlines()
    assert len(err) == 1 and "evaluation.data" in err[0] and "pip install datasets" in err[0]
