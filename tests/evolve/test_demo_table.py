"""The digits demo's table: every evolved soup (one per search seed) gets its own row."""

from __future__ import annotations

import json

from mergekit_like.soups.demo import paper_table


def test_every_search_seed_gets_a_row_before_the_ensemble(tmp_path):
    row = {"val_loss": 0.2, "test_loss": 0.3, "ingredients": 8, "detail": ""}
    greedy = {"metric": "accuracy", "table": [
        {"name": "greedy soup", "val": 0.9, "test": 0.8, **row},
        {"name": "ensemble", "val": 0.95, "test": 0.85, **row}]}
    learned = {"table": [{"name": "learned soup", "val": 0.91, "test": 0.81, **row}]}
    paths = [tmp_path / n for n in ("g.json", "l.json", "e0.json", "e1.json")]
    paths[0].write_text(json.dumps(greedy))
    paths[1].write_text(json.dumps(learned))
    for seed, path in enumerate(paths[2:]):
        best = {"val": 0.9 + seed / 100, "val_loss": 0.1, "test": 0.7 + seed / 100,
                "test_loss": 0.4, "parameters": {f"models[{i}].weight": [0.1, 0.2]
                                                 for i in range(8)}}
        path.write_text(json.dumps({"seed": seed, "evaluations": 40, "best": best}))
    table = paper_table(paths[0], paths[1], paths[2:])["table"]
    assert [r["name"] for r in table] == [
        "greedy soup", "learned soup", "evolved soup (search seed 0)",
        "evolved soup (search seed 1)", "ensemble"]
    assert [(r["val"], r["test"], r["test_loss"]) for r in table[2:4]] == [
        (0.9, 0.7, 0.4), (0.91, 0.71, 0.4)]
    assert table[2]["ingredients"] == 8 and table[2]["detail"] == "40 candidates"
