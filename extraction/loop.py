"""The extraction loop, resumable round by round.

Each round the attack selects `batches_per_round` batches, the oracle answers them (the accountants
add their costs), the calibrator (if any) prices them in PoW seconds, the stolen model trains on all
answers so far, and a row goes to out_dir/log.csv. After every round, log.csv and state.pt are
written atomically; a run started again with the same settings resumes after the last full round.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import attacks
from attacks.base import AttackContext
from common.errors import UserError
from common.io import atomic_torch_save, atomic_write_csv, write_params_json
from common.runtime import resolve_device, set_seed
from data.registry import load_splits, to_float
from models import architectures
from models.checkpoint import default_stolen_arch, load_victim
from models.oracle import VictimOracle
from models.training import make_optimizer, predict_logits, train_epochs
from pow import calibration
from pow.pricing import PowPayer
from privacy import accountants
from privacy.accountants import Ledger, cost_column
from privacy.knn import KnnVoter

log = logging.getLogger(__name__)

LOG_COLUMNS = ["round", "queries", "accuracy", "fidelity", "privacy_cost", "privacy_eps", "entropy_cost",
               "gap_cost", "query_time_s", "pow_time_s", "total_time_s", "pow_work", "pow_difficulty",
               "train_time_s"]
#: settings that may differ between a run and its resumption
RESUMABLE_CHANGES = {"fresh", "device", "budget", "command"}


def build_ledger(victim, victim_x, victim_y, settings, device, num_classes) -> Ledger:
    """Private kNN over the victim's log-softmax of its own training set, plus entropy and gap."""
    reps = VictimOracle(victim, device=device).representations(victim_x)
    k = min(settings.k, len(reps))
    voter = KnnVoter(reps, victim_y, k=k, num_classes=num_classes, seed=settings.seed)
    return Ledger([
        accountants.create("knn", voter=voter, sigma=settings.sigma, delta=settings.delta,
                           cap=bool(settings.cap_rdp), conversion=settings.rdp_conversion),
        accountants.create("entropy"),
        accountants.create("gap"),
    ])


def validate(s) -> None:
    """Readable errors for settings that cannot run."""
    if s.mode not in attacks.ATTACKS:
        raise UserError(f"unknown mode '{s.mode}'; valid modes: {', '.join(sorted(attacks.ATTACKS))}")
    if s.query_batch < 1:
        raise UserError(f"--query_batch must be at least 1, got {s.query_batch}")
    if s.budget < s.query_batch:
        raise UserError(f"--budget {s.budget} is below one batch of --query_batch {s.query_batch}; "
                        f"raise --budget to at least {s.query_batch}")
    if s.batches_per_round < 1 or s.stolen_epochs < 0:
        raise UserError("--batches_per_round must be at least 1 and --stolen_epochs at least 0")
    if not 0 < s.delta < 1 or s.sigma <= 0 or s.k < 1:
        raise UserError("the accountant needs 0 < --delta < 1, --sigma > 0 and --k >= 1")
    cost_column(s.cost_measure)


def _load_state(out_dir: Path, s) -> dict | None:
    path = out_dir / "state.pt"
    if s.fresh or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged state file
        raise UserError(f"{path} is damaged ({exc.__class__.__name__}); rerun with --fresh to start over") from exc
    old = {k: v for k, v in state["settings"].items() if k not in RESUMABLE_CHANGES}
    new = {k: v for k, v in s.as_dict().items() if k not in RESUMABLE_CHANGES}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise UserError(f"{out_dir} holds a run with other settings ({', '.join(changed)}); "
                        f"pass --fresh to start over there, or choose another --out_dir")
    return state


def run_extraction(s, *, progress: bool = True) -> dict:
    """Run (or resume) one extraction; returns a summary with the final row and the paths written."""
    validate(s)
    device = resolve_device(s.device)
    set_seed(s.seed)
    splits = load_splits(s.dataset, s.data_dir)
    spec = splits.spec
    victim, _ = load_victim(s.victim_path, spec, architecture=s.victim_arch, device=device)
    ledger = build_ledger(victim, splits.victim_x, splits.victim_y, s, device, spec.num_classes)
    oracle = VictimOracle(victim, device=device, output=s.victim_output, ledger=ledger)
    attack = attacks.create(s.mode, AttackContext(spec, splits.pool_x, s.budget, s.seed, s.data_dir, s.ood_pool))
    calibrator = payer = None
    if s.calibration:
        baseline = calibration.load_baseline(s.calibration, cost_measure=s.cost_measure)
        calibrator = calibration.create(s.calibration_mode, baseline, s)
        payer = PowPayer(s, resource=f"{s.dataset}-{s.mode}")
    cost_col = cost_column(s.cost_measure)

    stolen = architectures.create(s.stolen_arch or default_stolen_arch(spec), spec).to(device)
    optimizer = make_optimizer(stolen, optimizer=s.optimizer, lr=s.lr, momentum=s.momentum,
                               weight_decay=s.weight_decay)
    generator = torch.Generator().manual_seed(s.seed)
    victim_eval = predict_logits(victim, splits.eval_x, device).argmax(1)

    out_dir = Path(s.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, xs, answers, pow_time, pow_work = [], [], [], 0.0, 0.0
    state = _load_state(out_dir, s)
    if state is not None:
        rows, xs, answers, pow_time = state["rows"], state["xs"], state["answers"], state["pow_time_s"]
        pow_work = state.get("pow_work", 0.0)
        stolen.load_state_dict(state["stolen"])
        optimizer.load_state_dict(state["optimizer"])
        oracle.load_state_dict(state["oracle"])
        attack.load_state_dict(state["attack"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming %s after %d queries", out_dir, oracle.queries)
    params_path = write_params_json(out_dir, {
        **s.as_dict(), "calibrator": calibrator.describe() if calibrator else None,
        "pow_pricer": payer.describe() if payer else None}, "extract")

    bar = tqdm(total=s.budget, initial=min(oracle.queries, s.budget), unit="query", disable=not progress,
               desc=f"{s.mode} on {s.dataset}")
    while oracle.queries < s.budget:
        q_prev = oracle.queries
        for _ in range(s.batches_per_round):
            n = min(s.query_batch, s.budget - oracle.queries)
            if n <= 0:
                break
            x = attack.select(n)
            y = oracle.query(x)
            attack.observe(x, y)
            xs.append(x)
            answers.append(y)
            bar.update(len(x))
        totals = oracle.totals()
        difficulty = np.nan
        if calibrator is not None:
            seconds = float(calibrator.extra_seconds(q_prev, totals["queries"], totals[cost_col]))
            paid = payer.pay(seconds, batches=-(-(totals["queries"] - q_prev) // s.query_batch))
            pow_time += paid["seconds"]
            pow_work += paid["work"]
            difficulty = paid["difficulty"]
        start = time.perf_counter()
        all_x, all_y = torch.cat([to_float(x) for x in xs]), torch.cat(answers)
        if s.stolen_epochs:
            train_epochs(stolen, all_x, all_y, optimizer=optimizer, epochs=s.stolen_epochs,
                         batch_size=s.batch_size, device=device, generator=generator)
        train_time = time.perf_counter() - start
        pred = predict_logits(stolen, splits.eval_x, device).argmax(1)
        rows.append({
            "round": len(rows) + 1, "queries": totals["queries"],
            "accuracy": 100.0 * float((pred == splits.eval_y).float().mean()),
            "fidelity": 100.0 * float((pred == victim_eval).float().mean()),
            **{c: totals[c] for c in accountants.COST_COLUMNS},
            "query_time_s": totals["query_time_s"],
            "pow_time_s": pow_time if calibrator is not None else np.nan,
            "total_time_s": totals["query_time_s"] + pow_time if calibrator is not None else np.nan,
            "pow_work": pow_work if calibrator is not None else np.nan, "pow_difficulty": difficulty,
            "train_time_s": (rows[-1]["train_time_s"] if rows else 0.0) + train_time,
        })
        bar.set_postfix(acc=f"{rows[-1]['accuracy']:.1f}", cost=f"{totals[cost_col]:.1f}")
        atomic_write_csv(out_dir / "log.csv", pd.DataFrame(rows, columns=LOG_COLUMNS))
        atomic_torch_save({
            "settings": s.as_dict(), "rows": rows, "xs": xs, "answers": answers, "pow_time_s": pow_time, "pow_work": pow_work,
            "stolen": stolen.state_dict(), "optimizer": optimizer.state_dict(), "oracle": oracle.state_dict(),
            "attack": attack.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
        }, out_dir / "state.pt")
    bar.close()
    if payer is not None:
        payer.close()
    atomic_torch_save({"state_dict": stolen.state_dict(), "dataset": s.dataset}, out_dir / "stolen.pt")
    return {"log": out_dir / "log.csv", "params": params_path, "final": rows[-1] if rows else {},
            "calibrator": calibrator.describe() if calibrator else None}
