"""The parity table, as text for the terminal and as Markdown for the note."""

from __future__ import annotations

import argparse

from compare import Result

HEAD = (
    "case",
    "method",
    "family",
    "dtype",
    "layout",
    "tensors",
    "diff tensors",
    "diff entries",
    "max abs diff",
    "note",
)


def _row(r: Result) -> tuple[str, ...]:
    if r.status != "ok":
        return (
            r.case,
            r.method,
            r.family,
            r.dtype,
            r.layout,
            "-",
            "-",
            "-",
            "-",
            f"{r.status}: {r.message}"[:150],
        )
    notes = []
    if r.only_mk or r.only_ours:
        notes.append(f"names: {len(r.only_mk)} only mergekit, {len(r.only_ours)} only ours")
    if r.dtype_mismatch:
        notes.append(f"{len(r.dtype_mismatch)} dtype mismatches ({r.dtype_mismatch[0]})")
    if r.layers_mk != r.layers_ours:
        notes.append(f"num_hidden_layers mk {r.layers_mk} ours {r.layers_ours}")
    elif r.layers_mk is not None and r.case.startswith(("passthrough", "linear-slices")):
        notes.append(f"layers {r.layers_mk}")
    if r.random:
        s = r.stats
        notes.append(
            f"random: moved mk {s['moved_frac_mk']:.4f} ours {s['moved_frac_ours']:.4f}, "
            f"L1 ours/mk {s['l1_ratio_ours_over_mk']:.4f}, "
            f"std gap {s['max_rel_gap_std']:.3f}"
        )
    elif r.differing_tensors:
        w = r.worst[0]
        notes.append(f"worst {w.name} ({w.differing}/{w.numel})")
    return (
        r.case,
        r.method,
        r.family,
        r.dtype,
        r.layout,
        str(r.tensors),
        str(r.differing_tensors),
        f"{r.differing_entries}/{r.entries}",
        f"{r.max_abs:.3g}",
        "; ".join(notes),
    )


def render_table(results: list[Result]) -> str:
    rows = [HEAD] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEAD) - 1)]
    lines = []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("  ".join(cells) + "  " + row[-1])
    return "\n".join(lines)


def render_markdown(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        "# mergekit 0.1.5 vs merge: parity figures",
        "",
        f"chunk size {args.chunk_size}, seed {args.seed}, extra args `{args.merge_args}`. "
        "layout: shards per member (base/ft1/ft2/ft3); `1` one file, `Ni` N shards + index.",
        "Random cases (dare_*, della*) compare statistics of out - base; exact counts are "
        "listed for the record.",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
    ]
    for r in results:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _row(r)) + " |")
    lines += ["", "## Differing tensors (up to 8 per case)", ""]
    for r in results:
        if r.status == "ok" and r.worst and not r.random:
            lines.append(
                f"- {r.case} @ {r.family}: "
                + ", ".join(
                    f"{w.name} {w.differing}/{w.numel} (max {w.max_abs:.3g})" for w in r.worst
                )
            )
    return "\n".join(lines) + "\n"
