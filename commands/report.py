"""The grid's report: DIR/report.md with tables, figures and verdicts, all computed from the run logs.

Every run is priced offline by one rule against its own seed's `standard` baseline (the summarize code),
so the report never trusts a number written by hand. Per dataset, one row per mode: mean and spread
(standard deviation over seeds) of accuracy, fidelity, queries, privacy cost and its growth relative to
`standard` (cost per query over standard's), time without and with PoW, and the ratio. Beside them, the
paper's own numbers from its CSVs (pow-table's code). Verdicts are lines computed from those numbers.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

import parameters
from commands.grid import cells
from common.errors import UserError
from common.io import atomic_savefig, atomic_write_csv, atomic_write_text, read_csv_file
from common.tables import markdown
from extraction.cost_growth import ceiling
from extraction.state import finished
from extraction.summary import summarize_runs
from parameters import DEFAULTS
from pow import calibration
from pow.calibration import PAPER_BASE, PAPER_MAX_S, PAPER_MIN_S, CalibrationConfig
from pow.paper import PAPER_DIR, growth_claims, pow_table, read_attacks
from privacy.accountants import cost_column

PAPER_DATA = {"mnist-5k": "mnist", "mnist": "mnist", "fashion-mnist": "mnist", "svhn": "svhn", "cifar10": "cifar10"}
PAPER_MODES = {"adaptiveknockoff": "knockoff", "data free": "dfme"}  # the paper's names -> ours
METRICS = ["accuracy", "fidelity", "queries", "privacy_cost", "cost_growth", "entropy_growth", "time_no_pow_s",
           "time_pow_s", "ratio"]
LEGIT_MAX_RATIO = 2.0  # the claim: a legitimate user pays at most 2x in time
ATTACK_TARGET_RATIO = 100.0  # the claim: attackers pay up to 100x
PAPER_GROWTH = 7.0  # the paper: attackers' privacy cost grows up to 7x faster
SAME_DATA = {"mnist": "mnist", "svhn": "svhn", "cifar10": "cifar10"}  # our datasets that are the paper's own
ACCURACY_POINTS = 5.0  # beside the paper: a larger accuracy difference is a disagreement to explain
COST_SHARE = 0.25  # beside the paper: so is a larger relative difference in kNN cost per query
POOL_MODES = ("copycat", "knockoff")  # the modes whose queries come from the out-of-distribution pool


def _cost_measure() -> str:
    """The cost measure summarize prices with by default."""
    return DEFAULTS["cost_measure"]


def collect(grid: dict, out: Path) -> tuple:
    """(rows: one per finished run, priced; logs: {(dataset, mode, seed): priced log}, calibrators)."""
    rows, logs, cals = [], {}, {}
    runs = [c for c in cells(grid, out) if c.kind in ("baseline", "attack")]
    for d in grid["datasets"]:
        for seed in range(grid["seeds"]):
            mine = {c.name.split("/")[1].split("-b")[0]: c.folder for c in runs
                    if c.dataset == d and c.name.endswith(f"-s{seed}") and finished(c.folder) is not None}
            if "standard" not in mine:
                continue
            table, priced, cal = summarize_runs(mine, mine["standard"] / "log.csv",
                                                config=CalibrationConfig(), cost_measure=_cost_measure())
            cals[(d, seed)] = cal
            base = table.set_index("mode").loc["standard"]
            for row in table.to_dict("records"):
                def growth(column):
                    return (row[column] / row["queries"]) / (base[column] / base["queries"])
                rows.append({"dataset": d, "seed": seed, **row, "cost_growth": growth("privacy_cost"),
                             "entropy_growth": growth("entropy_cost")})
            for mode, frame in priced.items():
                logs[(d, mode, seed)] = frame
    return pd.DataFrame(rows), logs, cals


def cross_seed_legit(logs: dict, cals: dict, datasets: list, seeds: int, cost: str) -> dict:
    """{dataset: mean ratio of each seed's standard run priced against the next seed's baseline}: the
    out-of-sample check of the legitimate overhead (a run priced against itself pays budget + 1 by
    construction). Needs two seeds or more."""
    out = {}
    for d in datasets:
        ratios = [calibration.ratio(calibration.add_pow_columns(logs[(d, "standard", s)], cals[(d, (s + 1) % seeds)],
                                                                cost=cost))
                  for s in range(seeds) if seeds > 1 and (d, "standard", s) in logs and (d, (s + 1) % seeds) in cals]
        if ratios:
            out[d] = float(np.mean(ratios))
    return out


def aggregate(rows: pd.DataFrame, modes: list) -> pd.DataFrame:
    """Per dataset and mode: the mean and standard deviation over seeds of every metric."""
    out = []
    for (d, mode), g in rows.groupby(["dataset", "mode"], sort=False):
        entry = {"dataset": d, "mode": mode, "seeds": len(g)}
        for m in METRICS:
            entry[m] = float(g[m].mean())
            entry[f"{m}_sd"] = float(g[m].std(ddof=1)) if len(g) > 1 else 0.0
        out.append(entry)
    frame = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(modes)}
    return frame.sort_values(["dataset", "mode"], key=lambda c: c.map(order) if c.name == "mode" else c,
                             kind="stable").reset_index(drop=True)


def verdicts(summary: pd.DataFrame, cross: dict | None = None) -> list:
    """One line per claim and dataset, from the measured means. The legitimate overhead is judged on
    `cross` (each seed's standard run priced against another seed's baseline) where there is one."""
    lines = []
    cross = cross or {}
    for d, g in summary.groupby("dataset", sort=False):
        by = g.set_index("mode")
        if "standard" not in by.index:
            continue
        legit = by.loc["standard", "ratio"]
        if d in cross:
            holds = cross[d] <= LEGIT_MAX_RATIO * (1 + 1e-9)
            lines.append(f"{d}: legitimate overhead <= {LEGIT_MAX_RATIO:g}x: {'holds' if holds else 'fails'} "
                         f"({cross[d]:.2f}x, each seed's standard run priced against another seed's baseline)")
        else:
            lines.append(f"{d}: legitimate overhead <= {LEGIT_MAX_RATIO:g}x: not tested out of sample ({legit:.2f}x "
                         f"priced against its own run, which the relative calibration makes budget + 1 by "
                         f"construction; run --seeds 2 or more)")
        attacks = by.drop(index="standard")
        if len(attacks):
            parts = []
            for mode, r in attacks.sort_values("ratio", ascending=False).iterrows():
                note = " (not protected)" if r["ratio"] <= legit * 1.5 else ""
                parts.append(f"{mode} {_x(r['ratio'])}{note}")
            best = attacks["ratio"].max()
            lines.append(f"{d}: attackers pay up to {ATTACK_TARGET_RATIO:g}x: "
                         f"{'holds' if best >= ATTACK_TARGET_RATIO else 'fails'} ({', '.join(parts)})")
            top = attacks["cost_growth"].idxmax()
            growth = attacks.loc[top, "cost_growth"]
            word = "holds" if growth >= PAPER_GROWTH else ("in part" if growth > 1 else "fails")
            lines.append(f"{d}: attackers' privacy cost grows up to {PAPER_GROWTH:g}x faster than a legitimate "
                         f"user's: {word} (at most {growth:.2f}x, {top})")
            top_e = attacks["entropy_growth"].idxmax()
            most = attacks.loc[top_e, "entropy_growth"]
            lines.append(f"{d}: the calibrated measure (entropy) grows at most {most:.1f}x "
                         f"faster for an attacker ({top_e}) than for a legitimate user")
    return lines


def _x(v: float) -> str:
    return f"{v:.0f}x" if v >= 100 else f"{v:.2f}x" if v < 10 else f"{v:.1f}x"


def paper_rows(datasets: list, modes: list) -> dict:
    """{paper dataset: its pow-table summary, for the modes we share}."""
    out = {}
    for name in dict.fromkeys(PAPER_DATA[d] for d in datasets):
        summary, _ = pow_table(PAPER_DIR / f"time_privacy_cost_{name}.csv",
                               PAPER_DIR / f"model_extraction_attack_accuracy_{name}.csv", base=PAPER_BASE,
                               min_s=PAPER_MIN_S, max_s=PAPER_MAX_S)
        summary["mode"] = summary["mode"].replace(PAPER_MODES)
        out[name] = summary[summary["mode"].isin(modes)].reset_index(drop=True)
    return out


def paper_calibration_ratios(logs: dict, grid: dict, out: Path) -> dict:
    """{(dataset, mode, seed): the ratio of our run priced by the paper's calibration} (kNN cost, base 1.0075,
    against its own seed's standard run), for the datasets the paper measured itself."""
    config = calibration.CalibrationConfig(calibration_mode="paper", base=calibration.PAPER_BASE)
    base = {(c.dataset, c.name.rsplit("-s", 1)[1]): c.folder / "log.csv" for c in cells(grid, out)
            if c.kind == "baseline"}
    ratios, cals = {}, {}
    for (d, mode, seed), frame in logs.items():
        key = (d, str(seed))
        if d not in SAME_DATA or key not in base:
            continue
        if key not in cals:
            cals[key] = calibration.create(config, calibration.load_baseline(base[key], cost_measure="knn"))
        ratios[(d, mode, seed)] = calibration.ratio(calibration.add_pow_columns(frame, cals[key], cost="privacy_cost"))
    return ratios


def beside_paper(summary: pd.DataFrame, rows: pd.DataFrame, logs: dict, grid: dict, out: Path) -> list:
    """Per dataset the paper measured (MNIST, SVHN, CIFAR10): our row beside the authors' for each mode
    both ran, and a computed verdict per mode with the measured reasons for a difference."""
    lines = []
    paper_ratio = paper_calibration_ratios(logs, grid, out)
    for d, g in summary.groupby("dataset", sort=False):
        if d not in SAME_DATA:
            continue
        name = SAME_DATA[d]
        theirs = growth_claims(PAPER_DIR / f"time_privacy_cost_{name}.csv",
                               PAPER_DIR / f"model_extraction_attack_accuracy_{name}.csv")
        theirs["mode"] = theirs["mode"].replace(PAPER_MODES)
        curves = read_attacks(PAPER_DIR / f"model_extraction_attack_accuracy_{name}.csv")
        curves["mode"] = curves["mode"].replace(PAPER_MODES)
        priced = paper_rows([d], list(theirs["mode"]))[name].set_index("mode")
        theirs = theirs.set_index("mode")
        ours = g.set_index("mode")
        legit = ours.loc["standard", "privacy_cost"] / ours.loc["standard", "queries"] if "standard" in ours.index \
            else float("nan")
        table, verdict = [], []
        for mode in [m for m in ours.index if m in theirs.index]:
            o, t = ours.loc[mode], theirs.loc[mode]
            per_query = o["privacy_cost"] / o["queries"]
            ratios = [v for (dd, m, _), v in paper_ratio.items() if dd == d and m == mode]
            table.append({"mode": mode, "accuracy": f"{o['accuracy']:.1f} / {t['accuracy']:.1f}",
                          "queries": f"{o['queries']:,.0f} / {int(t['queries']):,}",
                          "kNN cost per query": f"{per_query:.3f} / {t['cost_per_query']:.3f}",
                          "cost growth": f"{per_query / legit:.2f}x / {t['growth_per_query']:.2f}x",
                          "ratio, paper calibration": f"{_x(np.mean(ratios)) if ratios else '-'} / "
                                                      f"{_x(priced.loc[mode, 'ratio'])}",
                          "ratio, ours (relative, entropy)": _x(o["ratio"])})
            verdict.append(_mode_verdict(d, mode, o, t, per_query, grid, _growth_evidence(out, d),
                                         curve=_curve_evidence(logs.get((d, mode, 0)), curves[curves["mode"] == mode])))
        lines += [f"## {d} beside the paper (ours / the authors' CSVs)", "",
                  markdown(pd.DataFrame(table), list(table[0]) if table else ["mode"]), "",
                  "The authors' CSVs carry no entropy cost, so our calibration prices only our runs. Verdicts "
                  f"(a difference above {ACCURACY_POINTS:g} accuracy points, or {COST_SHARE:.0%} in kNN cost per "
                  "query, needs a reason):", "", *[f"- {v}" for v in verdict], ""]
    return lines


def _growth_evidence(out: Path, dataset: str) -> dict:
    """From DIR/cost_growth.csv (the grid's cost-growth stage), for `dataset`'s own victim at the runs' sigma:
    the growth per pool, and the legitimate cost per query over each kNN set. Empty where there is none."""
    path = out / "cost_growth.csv"
    if not path.is_file():
        return {}
    try:
        frame = read_csv_file(path, "cost-growth table")
    except UserError:
        return {}
    need = {"victim", "knn_set", "pool", "sigma", "growth", "legit_eps_per_query"}
    if not need <= set(frame.columns) or dataset not in parameters.PRESETS:
        return {}
    frame = frame[(frame["victim"] == dataset) & (frame["sigma"] == parameters.PRESETS[dataset]["sigma"])]
    return {"pools": frame[frame["knn_set"] == dataset].groupby("pool")["growth"].mean().to_dict(),
            "legit": frame.groupby("knn_set")["legit_eps_per_query"].mean().to_dict()}


def _ceiling(dataset: str) -> dict:
    """The dearest query our accountant prices on `dataset` (its preset's k, sigma and delta)."""
    preset = parameters.PRESETS[dataset]
    return {**ceiling(preset["k"], 10, sigma=preset["sigma"], delta=preset["delta"]), "sigma": preset["sigma"],
            "delta": preset["delta"], "k": preset["k"]}


def _pool_name(pool: str) -> str:
    """A named pool as it is; a folder by its last two parts (cifar10-jpeg/train)."""
    parts = Path(pool).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else pool


def _curve_evidence(ours: pd.DataFrame | None, theirs: pd.DataFrame) -> str:
    """Where along the two accuracy curves an accuracy gap arises: both at the authors' first logged step,
    both at the end, and the authors' range over the last quarter of their steps ('' without our log)."""
    theirs = theirs[theirs["queries"] > 0]
    if ours is None or ours.empty or theirs.empty:
        return ""
    first_q = float(theirs["queries"].iloc[0])
    ours_first = ours.iloc[int((ours["queries"] - first_q).abs().to_numpy().argmin())]
    late = theirs["accuracy"].iloc[-max(1, len(theirs) // 4):]
    return (f"along the curves: at {first_q:,.0f} queries ours {ours_first['accuracy']:.1f} (at "
            f"{ours_first['queries']:,.0f}), theirs {theirs['accuracy'].iloc[0]:.1f}; at the end ours "
            f"{ours['accuracy'].iloc[-1]:.1f}, theirs {theirs['accuracy'].iloc[-1]:.1f}, their last quarter "
            f"{late.min():.1f} to {late.max():.1f}, their best {theirs['accuracy'].max():.1f}")


def _mode_verdict(d: str, mode: str, o, t, per_query: float, grid: dict, growth: dict, curve: str = "") -> str:
    gap = o["accuracy"] - t["accuracy"]
    share = per_query / t["cost_per_query"] - 1
    if abs(gap) <= ACCURACY_POINTS and abs(share) <= COST_SHARE:
        return (f"{mode}: agrees (accuracy {gap:+.1f} points, kNN cost per query {share:+.0%})")
    reasons = []
    if o["queries"] < 0.9 * t["queries"]:
        why = ("DFME's --dfme_budget" if mode == "dfme" else
               "the grid's plan: the attacker's pool, or --budget" if grid["profile"] == "full" else "--quick")
        reasons.append(f"we sent {o['queries']:,.0f} queries to the authors' {int(t['queries']):,} ({why})")
    if mode in POOL_MODES:
        pools = growth.get("pools", {})
        ours = pools.get(grid["ood_pool"])
        reasons.append(f"our pool is {_pool_name(grid['ood_pool'])}, the authors' ImageNet" +
                       (f"; measured (cost_growth.md): growth {ours:.2f}x with it, "
                        + ", ".join(f"{_pool_name(k)} {v:.2f}x" for k, v in pools.items() if k != grid["ood_pool"])
                        if ours is not None else ""))
    if abs(share) > COST_SHARE:
        bound = _ceiling(d)
        if t["cost_per_query"] > bound["most_eps"]:
            reasons.append(f"the authors' {t['cost_per_query']:.3f} per query is beyond what our accountant "
                           f"(sigma {bound['sigma']:g}, delta {bound['delta']:g}, k {bound['k']}) charges any "
                           f"query, {bound['most_eps']:.3f} at most: their noise must have been smaller "
                           + ("(cost_growth.md prices the same votes at other sigmas)" if growth else
                              "(`main.py cost-growth --sigmas` prices votes at other sigmas)"))
        knn = growth.get("legit", {})
        if knn and mode not in POOL_MODES:
            reasons.append("an in-distribution query costs " + ", ".join(
                f"{v:.3f} over {name}'s kNN" for name, v in knn.items()) + " (cost_growth.md); the authors' "
                f"legitimate user paid {t['cost_per_query'] / max(t['growth_per_query'], 1e-12):.3f}")
    if abs(gap) > ACCURACY_POINTS and curve:
        reasons.append(curve)
    if not reasons:
        reasons.append("no measured cause in this grid")
    return (f"{mode}: differs (accuracy {gap:+.1f} points, kNN cost per query {share:+.0%}): " + "; ".join(reasons))


def _pm(frame: pd.DataFrame, metric: str, digits: int = 2) -> pd.Series:
    return frame.apply(lambda r: f"{r[metric]:.{digits}f} ± {r[metric + '_sd']:.{digits}f}" if r["seeds"] > 1
                       else f"{r[metric]:.{digits}f}", axis=1)


def figures(logs: dict, cals: dict, grid: dict, folder: Path, cost_column: str) -> dict:
    """The report's three figures (seed 0): accuracy against time, costs against queries, the calibration
    curve with every run on it; returns {name: path}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    datasets = [d for d in grid["datasets"] if any(k[0] == d for k in logs)]
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(grid["modes"])}
    first = {d: {mode: frame for (dd, mode, seed), frame in logs.items() if dd == d and seed == 0} for d in datasets}
    drawings = {"accuracy_vs_time": (_accuracy_figure, "accuracy_vs_time.png"),
                "costs": (_cost_figure, "costs_vs_queries.png"),
                "calibration": (_calibration_figure, "calibration_curve.png")}
    paths = {}
    for name, (draw, file) in drawings.items():
        fig = draw(plt, first, colours, cals=cals, cost_column=cost_column)
        fig.tight_layout()
        paths[name] = folder / file
        atomic_savefig(fig, paths[name])
        plt.close(fig)
    return paths


def _accuracy_figure(plt, first: dict, colours: dict, **_):
    fig, axes = plt.subplots(1, len(first), figsize=(6 * len(first), 4.4), squeeze=False)
    for ax, (d, frames) in zip(axes[0], first.items()):
        for mode, frame in frames.items():
            ax.plot(frame["query_time_s"], frame["accuracy"], "--", color=colours[mode], lw=1, alpha=0.7)
            ax.plot(frame["total_time_s"], frame["accuracy"], "-o", color=colours[mode], ms=3, label=mode)
        ax.set(xscale="log", title=d, xlabel="time (s, log): dashed without PoW, solid with",
               ylabel="stolen accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return fig


def _cost_figure(plt, first: dict, colours: dict, **_):
    columns = ["privacy_cost", "entropy_cost", "gap_cost"]
    fig, axes = plt.subplots(len(first), 3, figsize=(15, 3.8 * len(first)), squeeze=False)
    for row, (d, frames) in zip(axes, first.items()):
        for ax, column in zip(row, columns):
            for mode, frame in frames.items():
                if column in frame:
                    ax.plot(frame["queries"], frame[column], "-o", ms=2, color=colours[mode], label=mode)
            ax.set(title=f"{d}: {column}", xlabel="queries", ylabel="cumulative cost")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7, ncol=2)
    return fig


def _calibration_figure(plt, first: dict, colours: dict, *, cals: dict, cost_column: str):
    fig, axes = plt.subplots(1, len(first), figsize=(6 * len(first), 4.2), squeeze=False)
    for ax, (d, frames) in zip(axes[0], first.items()):
        cal = cals.get((d, 0))
        if cal is None or not hasattr(cal, "excess"):
            continue
        excess = np.linspace(0, 3 * math.log(cal.max_factor / cal.budget) / math.log(cal.base), 200)
        curve = np.minimum(cal.budget * cal.base ** excess, cal.max_factor)
        ax.plot(excess, curve, "k-", lw=1.5, label="calibration: budget x base^excess, capped")
        for mode, frame in frames.items():
            queries, cost = frame["queries"].to_numpy(float), frame[cost_column].to_numpy(float)
            ax.plot(cal.excess(queries, cost), cal.multiplier(queries, cost), "o", color=colours[mode], ms=4,
                    label=mode)
        ax.set(yscale="log", title=f"{d}: calibration", xlabel="excess cost (legitimate batches' worth)",
               ylabel="extra time per batch / answering time")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def frontier_section(out: Path) -> list:
    """The frontier's own report (DIR/frontier/frontier.md), its headings one level down, and its figure."""
    text = out / "frontier" / "frontier.md"
    if not text.is_file():
        return []
    body = [("#" + line) if line.startswith("#") else line for line in text.read_text().splitlines()]
    return [*body, "", "![frontier](frontier/frontier.png)", ""]


def write_report(grid: dict, out: Path) -> Path:
    """DIR/report.md, DIR/summary.csv (mean and sd per dataset and mode) and DIR/figures/*.png."""
    rows, logs, cals = collect(grid, out)
    lines = [f"# Reproduction report: {', '.join(grid['datasets'])}", "",
             f"Grid: {len(grid['modes'])} modes x {grid['seeds']} seed(s), profile `{grid['profile']}`; "
             f"every run priced against its own seed's `standard` run (relative calibration, entropy cost). "
             f"Numbers are mean ± standard deviation over seeds.", ""]
    if rows.empty:
        lines += ["No finished runs yet: run `python main.py reproduce` with the same flags.", ""]
        path = out / "report.md"
        atomic_write_text(path, "\n".join(lines))
        return path
    summary = aggregate(rows, grid["modes"])
    atomic_write_csv(out / "summary.csv", summary)
    atomic_write_csv(out / "runs.csv", rows)
    cost = cost_column(_cost_measure())
    cross = cross_seed_legit(logs, cals, grid["datasets"], grid["seeds"], cost)
    lines += ["## Verdicts", "", *[f"- {v}" for v in verdicts(summary, cross)], ""]
    missing = [c.name for c in cells(grid, out) if c.kind in ("baseline", "attack") and finished(c.folder) is None]
    if missing:
        lines += [f"## Missing runs ({len(missing)} of the grid's cells have not finished; the tables leave them "
                  f"out)", "", *[f"- {name}" for name in missing], ""]
    for d, g in summary.groupby("dataset", sort=False):
        view = g.assign(**{m: _pm(g, m, 1 if m in ("accuracy", "fidelity") else 2) for m in METRICS})
        view["queries"] = g["queries"].map(lambda v: f"{v:.0f}")
        lines += [f"## {d}", "", markdown(view, ["mode", "seeds", *METRICS]), ""]
    lines += ["`cost_growth`, `entropy_growth`: privacy (kNN) and entropy cost per query over `standard`'s. "
              "`ratio`: time with PoW over time without.", ""]
    paper = paper_rows(grid["datasets"], grid["modes"])
    for name, frame in paper.items():
        lines += [f"## The paper's numbers ({name}, its own CSVs, paper calibration)", "",
                  markdown(frame, ["mode", "final_accuracy", "queries", "privacy_cost", "time_no_pow_s",
                                   "time_pow_s", "ratio"]), ""]
    lines += beside_paper(summary, rows, logs, grid, out)
    growth = out / "cost_growth.md"
    if growth.is_file():
        lines += [("#" + line) if line.startswith("#") else line for line in growth.read_text().splitlines()] + [""]
    paths = figures(logs, cals, grid, out / "figures", cost)
    lines += ["## Figures", ""] + [f"![{k}](figures/{p.name})" for k, p in paths.items()] + [""]
    lines += frontier_section(out)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
