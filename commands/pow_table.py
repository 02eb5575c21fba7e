"""pow-table: the paper's PoW table and figure, recomputed from its own result CSVs.

For each attack mode of model_extraction_attack_accuracy_D.csv: final and best accuracy, queries,
final privacy cost, time without PoW, time with PoW (paper calibration on time_privacy_cost_D.csv),
the ratio, and the same with the one-sided calibration (only cost above the line is charged).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.errors import UserError
from common.io import atomic_savefig, atomic_write_csv, check_outputs, params_beside, write_params_beside
from parameters import add_calibration
from pow.paper import pow_table as priced_table


def _split(text) -> list:
    return [p for p in str(text).split(",") if p]


def pow_table(s) -> tuple:
    cals, atts = _split(s.calibration), _split(s.attacks)
    if not cals or len(cals) != len(atts):
        raise UserError("give as many --calibration files as --attacks files (one pair per dataset)")
    inputs = {**{f"--calibration {i + 1}": c for i, c in enumerate(cals)},
              **{f"--attacks {i + 1}": a for i, a in enumerate(atts)}}
    check_outputs({"--out": s.out, "--plot": s.plot, "the settings record": params_beside(s.out) if s.out else None},
                  inputs)
    texts, tables, priced = [], [], {}
    for cal_csv, att_csv in zip(cals, atts):
        name = Path(att_csv).stem.replace("model_extraction_attack_accuracy_", "")
        summary, rows = priced_table(cal_csv, att_csv, base=s.base, min_s=s.min_s, max_s=s.max_s)
        summary.insert(0, "dataset", name)
        tables.append(summary)
        priced[name] = rows
        texts.append(f"{name} (paper calibration: base {s.base}, clip [{s.min_s}, {s.max_s}] s per 1,000 queries;"
                     f" one-sided charges only cost above the legitimate line)\n"
                     + summary.drop(columns="dataset").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    result = pd.concat(tables, ignore_index=True)
    if s.out:
        atomic_write_csv(s.out, result)
        write_params_beside(s.out, s.as_dict(), "pow-table")
    if s.plot:
        plot(priced, s.plot)
        texts.append(f"plot: {s.plot}")
    return result, "\n\n".join(texts)


def plot(priced: dict, path) -> None:
    """Accuracy against time, with (solid) and without (dashed) PoW; one panel per dataset."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(priced), figsize=(5.5 * len(priced), 4.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], priced.items()):
        for i, (mode, g) in enumerate(rows.groupby("mode", sort=False)):
            color = plt.cm.tab10(i % 10)
            ax.plot(g["query_time_s"], g["accuracy"], "--", color=color, lw=1)
            ax.plot(g["total_time_s"], g["accuracy"], "-", color=color, lw=1.5, label=mode)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("time (s, log): dashed without PoW, solid with")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def add_arguments(sub) -> None:
    p = sub.add_parser("pow-table", help="the paper's PoW table and figure from its own CSVs")
    p.add_argument("--calibration", required=True, help="time_privacy_cost_D.csv (comma-separated for several)")
    p.add_argument("--attacks", required=True,
                   help="model_extraction_attack_accuracy_D.csv (comma-separated, same order)")
    add_calibration(p)
    p.add_argument("--plot", default=None, help="PNG of accuracy against time, one panel per dataset")
    p.add_argument("--out", default=None, help="CSV of the table (default: print only)")
