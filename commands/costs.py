"""privacy-cost (offline vote tables), cost-separation (which measure tells attackers apart) and
cost-growth (which choice makes an attacker's kNN cost grow faster, beside the paper's claim)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import UserError
from common.io import atomic_write_csv, check_outputs, input_file, params_beside, write_params_beside
from common.runtime import resolve_device, set_seed
from data.ood import ood_pool
from data.registry import DATASETS, load_splits
from extraction import cost_growth as growth
from models.checkpoint import load_victim
from models.oracle import Victim
from models.teachers import load_teachers, teachers_command
from parameters import (
    DATASET_NAMES,
    NONNEG_INT,
    POS_INT,
    add_accountant,
    add_recipe,
    default_text,
    listed,
    number,
    pool_arg,
)
from privacy import accountants
from privacy.accountants import cumulative_costs
from privacy.knn import KnnVoter
from privacy.rdp import MIN_SIGMA


def read_votes(path) -> np.ndarray:
    """A CSV of vote histograms, one per row, with or without a header; UserError when malformed."""
    path = input_file(path, "votes file")
    try:
        frame = pd.read_csv(path, header=None, dtype=str, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"votes file {path} is not a readable CSV ({exc.__class__.__name__}: {exc})") from exc
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    if numeric.iloc[0].isna().all():  # a header row
        numeric = numeric.iloc[1:]
    if numeric.empty:
        raise UserError(f"votes file {path} has no vote rows")
    bad = numeric.isna().any(axis=1)
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 1 + (len(frame) - len(numeric))
        raise UserError(f"votes file {path}: row {line} has an empty or non-numeric count; "
                        f"every row must hold one count per class, e.g. 290,5,5,0,0,0,0,0,0,0")
    votes = numeric.to_numpy(dtype=float)
    if not np.isfinite(votes).all():
        raise UserError(f"votes file {path}: counts must be finite numbers (no inf, nan or values past 1e308)")
    if votes.shape[1] < 2 or (votes < 0).any():
        raise UserError(f"votes file {path}: counts must be non-negative, with at least two classes per row")
    return votes


def privacy_cost(s) -> tuple:
    check_outputs({"--out": s.out}, {"--votes": s.votes})
    votes = read_votes(s.votes)
    table = cumulative_costs(votes, sigma=s.sigma, delta=s.delta, cap=bool(s.cap_rdp),
                             conversion=s.rdp_conversion)
    frame = pd.DataFrame({"query": np.arange(1, len(votes) + 1), "eps": table["eps"],
                          "privacy_cost": table["privacy_cost"], "privacy_eps": table["privacy_eps"]})
    if s.out:
        atomic_write_csv(s.out, frame)
    head = (f"# sigma={s.sigma} delta={s.delta} cap_rdp={bool(s.cap_rdp)} conversion={s.rdp_conversion}\n"
            f"# eps: this query's own epsilon; privacy_cost: sum of eps (the paper's measure); "
            f"privacy_eps: epsilon of all queries so far (summed RDP)\n")
    return frame, head + frame.to_string(index=False, float_format=lambda v: f"{v:.6f}")


def cost_separation(s, *, progress: bool = True) -> tuple:
    """Mean cost per query of each measure for in-distribution and OOD clients, and their ratio."""
    out = Path(s.out or "results/cost_separation.csv")
    names = [d for d in str(s.datasets).split(",") if d]
    victims = {f"the victim of {d}": Path(s.victim_dir) / f"{d}-victim.pt" for d in names}
    teacher_files = {f"the teachers of {d}": Path(s.victim_dir) / f"{d}-teachers.pt" for d in names}
    check_outputs({"--out": out, "the settings record": params_beside(out)}, {**victims, **teacher_files})
    if int(s.queries) < 1:
        raise UserError(f"--queries must be at least 1, got {s.queries}")
    device = resolve_device(s.device)
    set_seed(s.seed)
    rows, notes = [], []
    sigmas = [float(v) for v in str(s.sigmas).split(",") if v]
    for name in names:
        splits = load_splits(name, s.data_dir)
        spec = splits.spec
        victim, _ = load_victim(Path(s.victim_dir) / f"{name}-victim.pt", spec, device=device)
        oracle = Victim(victim, device=device)
        n = min(s.queries, len(splits.pool_x))
        idx = np.random.default_rng(s.seed).permutation(len(splits.pool_x))[:n]
        images = {"in-distribution": splits.pool_x[idx],
                  f"ood ({s.ood_pool})": ood_pool(s.ood_pool, n, spec, seed=s.seed, data_dir=s.data_dir)}
        clients = {c: oracle.log_probs(x) for c, x in images.items()}
        reps = oracle.representations(splits.victim_x)
        voter = KnnVoter(reps, splits.victim_y, k=min(s.k, len(reps)), num_classes=spec.num_classes)
        votes = {c: voter.votes(lp).numpy() for c, lp in clients.items()}
        measures = {f"knn sigma={sg:g}": {c: accountants.knn_costs(v, sigma=sg, delta=s.delta)[0].mean()
                                          for c, v in votes.items()} for sg in sigmas}
        measures["entropy"] = {c: accountants.EntropyAccountant().score(lp).mean().item() for c, lp in clients.items()}
        measures["gap"] = {c: accountants.GapAccountant().score(lp).mean().item() for c, lp in clients.items()}
        teachers_path = Path(s.victim_dir) / f"{name}-teachers.pt"
        if teachers_path.exists():
            ensemble, _ = load_teachers(teachers_path, spec, device=device, flag="--victim_dir (DATASET-teachers.pt)")
            sigma = accountants.pate_sigma(len(ensemble), s.pate_sigma)
            measures[f"pate sigma={sigma:g} ({len(ensemble)} teachers)"] = {
                c: accountants.knn_costs(ensemble.votes(x).numpy(), sigma=sigma, delta=s.delta)[0].mean()
                for c, x in images.items()}
        else:
            notes.append(f"no PATE rows for {name}: {teachers_path} does not exist; create it with: "
                         f"{teachers_command(name, teachers_path)}")
        for measure, vals in measures.items():
            ind, ood = list(vals.values())
            rows.append({"dataset": name, "measure": measure, "in_distribution": ind, "ood": ood,
                         "ratio": ood / ind if ind > 0 else float("inf"), "queries": n})
    frame = pd.DataFrame(rows)
    atomic_write_csv(out, frame)
    write_params_beside(out, s.as_dict(), "cost-separation")
    text = frame.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    note = "".join(f"note: {line}\n" for line in notes)
    return frame, f"mean cost per query (k={s.k}, delta={s.delta})\n{text}\n{note}written to {out}"


def cost_growth(s, *, progress: bool = True) -> tuple:
    """The factorial over victims x kNN sets x pools x sigmas, its main effects, and the paper's CSVs."""
    return growth.run(growth.GrowthJob.of(s.as_dict()), record=s.as_dict(), progress=progress)


def add_privacy_cost_arguments(sub) -> None:
    p = sub.add_parser("privacy-cost", help="per-query epsilon and cumulative costs of vote histograms (CSV)")
    p.add_argument("--votes", required=True, help="CSV with one vote histogram per row (header optional)")
    p.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help=f"preset for sigma and delta {default_text('dataset')}")
    add_accountant(p, with_knn=False)
    p.add_argument("--out", default=None, help="also write the table as CSV here (default: print only)")


def add_cost_separation_arguments(sub) -> None:
    p = sub.add_parser("cost-separation",
                       help="mean cost per query of each measure, in-distribution vs out-of-distribution")
    p.add_argument("--datasets", default=None, type=DATASET_NAMES,
                   help="comma-separated datasets (default: mnist-5k,fashion-mnist)")
    p.add_argument("--data_dir", default=None, help=f"{default_text('data_dir')}")
    p.add_argument("--seed", type=NONNEG_INT, default=None, help=f"{default_text('seed')}")
    p.add_argument("--device", default=None, help=f"{default_text('device')}")
    p.add_argument("--victim_dir", default=None,
                   help="folder of DATASET-victim.pt checkpoints (default: checkpoints)")
    p.add_argument("--queries", type=POS_INT, default=None, help="queries per client (default: 1000)")
    p.add_argument("--sigmas", default=None, type=listed(number(float, MIN_SIGMA, 1e6), "sigma"),
                   help="comma-separated private-kNN sigmas (default: 28,10)")
    p.add_argument("--ood_pool", default=None, type=pool_arg, help=f"{default_text('ood_pool')}")
    p.add_argument("--pate_sigma", type=number(float, MIN_SIGMA, 1e6), default=None,
                   help="GNMax noise over the votes of DATASET-teachers.pt in --victim_dir (default: 0.04 per teacher)")
    p.add_argument("--out", default=None, help="CSV of the table (default: results/cost_separation.csv)")


def add_cost_growth_arguments(sub) -> None:
    add_recipe(sub, "cost-growth")  # the reproduce grid writes and runs its command lines: its flags live in parameters
