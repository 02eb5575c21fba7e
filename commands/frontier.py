"""frontier: what each attacker buys for what it pays, and what each kind of legitimate user pays, under
each pricing rule; one table and one figure per run, over one or more datasets.

For each dataset:
1. the victim (trained first when missing) and a legitimate baseline: a standard run with another seed
   than every stream below (seed + 1), whose log calibrates the price;
2. each attacker's query stream, recorded once by running the attack for real (as `sybil` does), with
   its stolen accuracy; an attack that draws from the in-distribution pool sends at most the pool;
3. each legitimate profile's stream (data/profiles.py); easy and hard take the victim's loss on each
   pool image's true label as its difficulty;
4. under each rule (--deficit_tolerances: off is one-sided, a number T two-sided with deficits beyond T
   standard deviations priced), each stream is replayed through the server's own PredictionService:
   attackers under every split (keys x batch size), profiles on one key at every batch size.
Columns: time_ratio is (answering + PoW) / answering time; over_legit is the stream's PoW per second of
answering over the standard profile's under the same split and rule (per query, as every query of a
batch size takes the same answering time; in answering time, so that the machine's load, which moves
both, cancels out). Targets: every profile's time_ratio at most 2
(1 + --pow_budget), every out-of-distribution attacker's over_legit at least 100 at every split.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

import parameters
from attacks.base import ATTACKS
from commands import streams as sy
from common.errors import UserError
from common.io import (
    atomic_savefig,
    atomic_write_csv,
    atomic_write_text,
    check_outputs,
    file_sha256,
    params_beside,
    read_csv_file,
    write_params_beside,
)
from common.runtime import resolve_device
from data.profiles import NEEDS_DIFFICULTY, profile_stream
from data.registry import load_splits
from extraction.loop import run_extraction
from models.checkpoint import load_victim
from models.oracle import Victim
from models.victim_training import VictimRecipe, train_victim
from parameters import add_recipe

COLUMNS = ["dataset", "rule", "kind", "mode", "keys", "batch", "queries", "time_ratio", "over_legit", "accuracy",
           "round_trips"]
OOD_ATTACKERS = ("copycat", "knockoff", "dfme", "worstcaseood")  # queries from outside the task
LEGIT_TARGET, ATTACKER_TARGET = 2.0, 100.0
TIMING_NOISE = 0.03  # a time ratio is measured in answering times to about this (the standard user: 1.92x-2.04x)
WARM_QUERIES = 1024  # queries replayed per batch size before anything is priced
BASELINE_QUERIES = 1024  # the baseline's queries (at most; no more than the streams' and at least 256)


def rule_name(tolerance) -> str:
    return "one-sided" if tolerance is None else f"two-sided {tolerance:g}"


def parse_tolerances(text: str) -> list:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if part == "off":
            out.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"--deficit_tolerances: '{part}' is neither 'off' nor a non-negative number")
        out.append(value)
    return list(dict.fromkeys(out))


def frontier(s) -> tuple:
    out_dir = Path(s.out_dir)
    table_path, plot_path, text_path = out_dir / "frontier.csv", out_dir / "frontier.png", out_dir / "frontier.md"
    check_outputs({"--out_dir's table": table_path, "the plot": plot_path, "the report": text_path}, {})
    datasets = [d for d in str(s.datasets).split(",") if d]
    attackers = [m for m in str(s.attackers).split(",") if m and m != "standard"]
    profiles = ["standard", *[p for p in str(s.profiles).split(",") if p and p != "standard"]]
    tolerances = parse_tolerances(s.deficit_tolerances)
    keys_list = sorted({int(v) for v in str(s.accounts).split(",")})
    batches = sorted({int(v) for v in str(s.batches).split(",")})
    rows = []
    for dataset in datasets:
        rows += _dataset_rows(s, sy, dataset, attackers, profiles, tolerances, keys_list, batches, out_dir)
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_csv(table_path, table)
    write_params_beside(table_path, s.as_dict(), "frontier")
    _plot(table, plot_path)
    text = report(table)
    atomic_write_text(text_path, text)
    return table, f"{text}\ntable: {table_path}\nplot: {plot_path}\nreport: {text_path}"


def _dataset_rows(s, sy, dataset, attackers, profiles, tolerances, keys_list, batches, out_dir) -> list:
    victim_path = Path(s.victim_dir) / f"{dataset}-victim.pt"
    preset = {k: v for k, v in parameters.PRESETS[dataset].items() if k not in s.given_flags}
    ds = s.replace(dataset=dataset, victim_path=str(victim_path), out=None, **preset)
    _ensure_victim(ds)
    splits = load_splits(dataset, s.data_dir)
    baseline = _baseline(ds, out_dir / dataset / "baseline")
    runs = out_dir / dataset / "streams"
    streams = {}
    for mode in tqdm(attackers, desc=f"{dataset}: attack streams", unit="mode"):
        cap = _capacity(mode, splits)
        streams[mode] = sy.record_stream(ds.replace(budget=min(int(s.budget), cap)), mode, runs)
    difficulty = _difficulty(ds, splits) if set(profiles) & set(NEEDS_DIFFICULTY) else None
    legit = {p: profile_stream(p, splits.pool_x, splits.pool_y, int(s.budget), seed=int(s.seed),
                               difficulty=difficulty) for p in profiles}
    rows = []
    for tolerance in tolerances:
        rule = rule_name(tolerance)
        priced = ds.replace(calibration=str(baseline), deficit_tolerance=tolerance)

        def price_all():
            with tempfile.TemporaryDirectory(prefix="frontier-") as tmp:
                replay = sy.InProcessReplay(priced, Path(tmp))
                try:
                    return _price_all(replay, dataset, rule, streams, legit, keys_list, batches)
                finally:
                    replay.close()
        rows += _kept(out_dir / dataset / "priced" / f"{rule.replace(' ', '-')}.csv", priced.as_dict(), price_all,
                      inputs=(victim_path, baseline))
    return rows


def _kept(part: Path, settings: dict, compute, inputs=()) -> list:
    """One dataset's rows under one rule: read back from `part` when an earlier run with the same settings
    and the same `inputs` (files, compared by content) priced them all, so a frontier stopped midway
    resumes after its last finished rule; else computed and kept there. The record beside the CSV goes
    first and comes back last, with the CSV's checksum: a CSV cut short or edited, or one written after
    its record was, is priced again."""
    record = params_beside(part)
    key = {"settings": json.loads(json.dumps(settings, default=str)),
           "inputs": {str(path): file_sha256(path) for path in inputs}}
    if part.is_file() and record.is_file():
        try:
            kept = json.loads(record.read_text())
            same = {k: kept.get(k) for k in key} == key and kept.get("sha256") == file_sha256(part)
        except (OSError, ValueError, AttributeError):  # cut short or edited: price again
            same = False
        if same:
            return read_csv_file(part, "a frontier's priced rows").to_dict("records")
    rows = compute()
    part.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    atomic_write_csv(part, pd.DataFrame(rows, columns=COLUMNS))
    write_params_beside(part, settings, "frontier", inputs=key["inputs"], sha256=file_sha256(part))
    return rows


def _price_all(replay, dataset, rule, streams, legit, keys_list, batches) -> list:
    rows, reference = [], {}
    for batch in batches:  # untimed: the service learns its answering time per batch size first (a fresh
        # one prices in the baseline's, which a busier or quieter machine recorded)
        replay.price(legit["standard"][:max(batch, min(len(legit["standard"]), WARM_QUERIES))], keys=1,
                     batch=batch, tag=f"warm-{batch}")
    jobs = [("legitimate", p, 1, b) for p in legit for b in batches]
    jobs += [("attacker", m, k, b) for m in streams for k in keys_list for b in batches
             if k * b <= len(streams[m]["x"])]
    for kind, mode, keys, batch in tqdm(jobs, desc=f"{dataset}, {rule}", unit="split"):
        x = legit[mode] if kind == "legitimate" else streams[mode]["x"]
        split = (keys, batch)
        if split not in reference:  # the standard user under the same split: the attackers' yardstick
            reference[split] = replay.price(legit["standard"][:len(x)], keys=keys, batch=batch,
                                            tag=f"ref-{keys}-{batch}")
        paid = replay.price(x, keys=keys, batch=batch, tag=f"{mode}-{keys}-{batch}")
        ref = reference[split]
        rows.append({"dataset": dataset, "rule": rule, "kind": kind, "mode": mode, "keys": keys, "batch": batch,
                     "queries": paid["queries"], "time_ratio": paid["ratio"],
                     "over_legit": (paid["pow_s"] / paid["answer_s"]) / (ref["pow_s"] / ref["answer_s"]),
                     "accuracy": float("nan") if kind == "legitimate" else streams[mode]["accuracy"],
                     "round_trips": paid["round_trips"]})
    return rows


def _capacity(mode: str, splits) -> int:
    """The most queries `mode` can send from this dataset's in-distribution pool."""
    cap = ATTACKS[mode].max_budget(len(splits.pool_x))
    return 10 ** 9 if cap is None else cap


def _ensure_victim(s) -> None:
    if Path(s.victim_path).is_file():
        return
    train_victim(VictimRecipe.of(parameters.parse(["train-victim", "--dataset", s.dataset, "--data_dir", s.data_dir,
                                                   "--victim_path", s.victim_path, "--device", s.device,
                                                   "--seed", str(s.seed)]).as_dict()))


def _baseline(s, folder: Path) -> Path:
    """A standard run's log with another seed than the streams (resumed where it stopped)."""
    log = folder / "log.csv"
    queries = min(BASELINE_QUERIES, max(int(s.budget), 256))
    argv = ["extract", "--mode", "standard", "--dataset", s.dataset, "--data_dir", s.data_dir,
            "--seed", str(int(s.seed) + 1), "--victim_path", s.victim_path, "--out_dir", str(folder),
            "--budget", str(queries), "--device", s.device, "--cost_measure", s.cost_measure]
    done = pd.read_csv(log)["queries"] if log.is_file() else pd.Series(dtype=float)
    if done.empty or done.iloc[-1] < queries:
        run_extraction(parameters.parse(argv), progress=False)
    return log


def _difficulty(s, splits) -> torch.Tensor:
    """The victim's loss on each pool image's true label (higher: harder)."""
    device = resolve_device(s.device)
    victim = Victim(load_victim(s.victim_path, splits.spec, device=device)[0], device=device)
    logp = victim.representations(splits.pool_x)
    return -logp.gather(1, splits.pool_y.long().view(-1, 1)).flatten()


def report(table: pd.DataFrame) -> str:
    """The markdown report: per dataset and rule, the profiles' ratios and each attacker's worst split."""
    lines = ["# The defence frontier", "",
             f"Legitimate profiles: time with PoW over without (target at most {LEGIT_TARGET:g}x, measured to "
             f"{TIMING_NOISE:.0%}). Attackers: "
             f"PoW per query (per second of answering) over the standard user's under the same split, the least "
             f"over every split (target "
             f"at least {ATTACKER_TARGET:g}x for out-of-distribution attackers), and their stolen accuracy.", ""]
    for (dataset, rule), part in table.groupby(["dataset", "rule"], sort=False):
        lines += [f"## {dataset}, {rule}", "", "| stream | kind | time ratio | over legit (least) | over legit (most) "
                  "| least at split | accuracy | verdict |", "|---|---|---|---|---|---|---|---|"]
        for (kind, mode), rows in part.groupby(["kind", "mode"], sort=False):
            worst = rows.loc[rows["over_legit"].idxmin()]
            if kind == "legitimate":
                ok = rows["time_ratio"].max() <= LEGIT_TARGET * (1 + TIMING_NOISE)
                verdict = "within 2x" if ok else f"pays {rows['time_ratio'].max():.2f}x"
            elif mode in OOD_ATTACKERS:
                verdict = "stopped" if worst["over_legit"] >= ATTACKER_TARGET else "below 100x"
            else:
                verdict = "in-distribution, as measured"
            accuracy = "" if kind == "legitimate" else f"{worst['accuracy']:.1f}%"
            lines.append(f"| {mode} | {kind} | {rows['time_ratio'].min():.2f}x to {rows['time_ratio'].max():.2f}x | "
                         f"{rows['over_legit'].min():.1f}x | {rows['over_legit'].max():.1f}x | "
                         f"{int(worst['keys'])} keys x {int(worst['batch'])} | {accuracy} | {verdict} |")
        lines.append("")
    lines += rules_table(table)
    return "\n".join(lines) + "\n"


def rules_table(table: pd.DataFrame) -> list:
    """Per dataset and rule: each profile's highest time ratio and each in-distribution attacker's least
    over_legit, the two sides a rule trades between."""
    profiles = list(dict.fromkeys(table.loc[table["kind"] == "legitimate", "mode"]))
    inside = list(dict.fromkeys(table.loc[(table["kind"] == "attacker") & ~table["mode"].isin(OOD_ATTACKERS),
                                          "mode"]))
    lines = ["## The rules side by side", "",
             "Each legitimate profile's highest time ratio, and each in-distribution attacker's least PoW over "
             "the standard user's, per rule.", "",
             "| dataset | rule | " + " | ".join([*profiles, *inside]) + " |",
             "|---|---|" + "---|" * (len(profiles) + len(inside))]
    for (dataset, rule), part in table.groupby(["dataset", "rule"], sort=False):
        cells = [f"{part.loc[part['mode'] == m, 'time_ratio'].max():.2f}x" for m in profiles]
        cells += [f"{part.loc[part['mode'] == m, 'over_legit'].min():.2f}x" for m in inside]
        lines.append(f"| {dataset} | {rule} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(table["dataset"]))
    rules = list(dict.fromkeys(table["rule"]))
    fig, axes = plt.subplots(len(datasets), len(rules), figsize=(4.2 * len(rules), 3.6 * len(datasets)),
                             squeeze=False, sharex=True)
    for (dataset, rule), part in table.groupby(["dataset", "rule"], sort=False):
        ax = axes[datasets.index(dataset)][rules.index(rule)]
        attackers = part[part["kind"] == "attacker"]
        for mode, rows in attackers.groupby("mode", sort=False):
            lo, hi = rows["over_legit"].min(), rows["over_legit"].max()
            acc = rows["accuracy"].iloc[0]
            ax.errorbar([lo], [acc], xerr=[[0], [hi - lo]], fmt="o" if mode in OOD_ATTACKERS else "s", capsize=2,
                        label=mode, markersize=4)
        for mode, rows in part[part["kind"] == "legitimate"].groupby("mode", sort=False):
            ax.axvline(rows["over_legit"].max(), color="grey", lw=0.6, ls=":")
            ax.text(rows["over_legit"].max(), 2, f" {mode}", rotation=90, fontsize=6, color="grey", va="bottom")
        ax.axvline(ATTACKER_TARGET, color="red", lw=0.6)
        ax.set(xscale="log", xlabel="PoW per query over the standard user's", ylim=(0, 100),
               title=f"{dataset}, {rule}")
    for row in axes:
        row[0].set_ylabel("stolen accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle("Attackers (marker: worst split; bar: to the best) and legitimate profiles (dotted)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    atomic_savefig(fig, path)
    plt.close(fig)


def add_arguments(sub) -> None:
    add_recipe(sub, "frontier")  # other commands write and run its command lines: its flags live in parameters
