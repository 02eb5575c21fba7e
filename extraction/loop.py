"""The extraction loop, resumable round by round.

Each round the attack selects `batches_per_round` batches, the oracle answers them (the accountants
add their costs), the calibrator (if any) prices them in PoW seconds, the stolen model trains on all
answers so far, and a row goes to out_dir/log.csv. After every round state.pt is written atomically
and log.csv and params.json are rebuilt from it (extraction/state.py); a run started again with the
same settings and inputs resumes after the last full round, and a killed run loses at most a round.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import attacks
from attacks.base import AttackContext, TrainingAttack
from common import checks
from common.errors import UserError
from common.io import atomic_torch_save, ensure_writable_dir, input_file, run_metadata, safe_torch_load
from common.runtime import resolve_device, set_seed
from data.registry import load_splits, to_float
from extraction.oracles import PricedOracle
from extraction.state import RunFolder, comparable, fingerprint, input_files, run_file_of
from models import architectures
from models.checkpoint import default_stolen_arch, load_victim
from models.oracle import Victim, VictimOracle
from models.teachers import load_teachers
from models.training import make_optimizer, predict_logits, train_epochs
from pow import calibration
from pow.pricing import PowPayer
from pow.timing import read_timing_csv
from privacy import accountants
from privacy.accountants import cost_column
from privacy.rdp import MIN_SIGMA

log = logging.getLogger(__name__)

LOG_COLUMNS = ["round", "queries", "accuracy", "fidelity", "privacy_cost", "privacy_eps", "entropy_cost",
               "gap_cost", "pate_cost", "pate_eps", "query_time_s", "pow_time_s", "total_time_s", "pow_work",
               "pow_difficulty", "train_time_s"]


def validate(s) -> None:
    """Readable errors for settings that cannot run, before anything is loaded or written."""
    if s.mode not in attacks.ATTACKS:
        raise UserError(f"unknown mode '{s.mode}'; valid modes: {', '.join(sorted(attacks.ATTACKS))}")
    checks.whole("--query_batch", s.query_batch, lo=1)
    checks.whole("--budget", s.budget, lo=1)
    if s.budget < s.query_batch:
        raise UserError(f"--budget {s.budget} is below one batch of --query_batch {s.query_batch}; "
                        f"raise --budget to at least {s.query_batch}")
    checks.whole("--batches_per_round", s.batches_per_round, lo=1)
    checks.whole("--stolen_epochs", s.stolen_epochs, lo=0)
    checks.whole("--batch_size", s.batch_size, lo=1)
    checks.whole("--k", s.k, lo=1)
    checks.whole("--seed", s.seed, lo=0)
    checks.finite("--sigma", s.sigma, lo=MIN_SIGMA, hi=1e6)
    if s.pate_sigma is not None:
        checks.finite("--pate_sigma", s.pate_sigma, lo=MIN_SIGMA, hi=1e6)
    checks.finite("--delta", s.delta, lo=0, hi=1, lo_open=True, hi_open=True)
    cost_column(s.cost_measure)
    for mode in attacks.ATTACKS:  # every mode's own flags, range-checked, even those this mode ignores
        attacks.options_for(mode, s.as_dict())
    files = input_files(s)
    for name, path in files.items():
        reserved = run_file_of(Path(s.out_dir), path)
        if reserved:
            raise UserError(f"--{name} {path} is the run's own {reserved} in --out_dir {s.out_dir}, which the run "
                            f"writes; copy the file elsewhere first, or choose another --out_dir")
    if "calibration" in files:
        input_file(files["calibration"], "--calibration")
    if "timing_csv" in files:
        read_timing_csv(files["timing_csv"])  # says how to make a missing table


def _metadata(s, oracle, pate) -> dict:
    pricing = oracle.describe()
    return run_metadata({**s.as_dict(), "calibrator": pricing.get("calibrator"),
                         "pow_pricer": pricing.get("pow_pricer"), "pate": pate}, "extract")


def run_extraction(s, *, progress: bool = True, oracle=None, tap=None) -> dict:
    """Run (or resume) one extraction; returns a summary with the final row and the paths written.

    Everything that can be checked is checked before the run folder is touched: settings, input files,
    the dataset, the victim and the baseline. A failure leaves no new file behind. `oracle` (a
    models.oracle.Oracle) answers the queries; None builds the local one: the victim, its accountants, and
    with --calibration the calibrated PoW (PricedOracle). A server.client.RemoteOracle has a live server
    answer, account and price instead; the local victim then serves only to measure fidelity. The loop
    treats both alike. `tap(x)`, when given, sees every query batch as it is sent (sybil records the
    attack's query stream with it)."""
    validate(s)
    out_dir = ensure_writable_dir(Path(s.out_dir), "--out_dir")
    device = resolve_device(s.device)
    inputs = fingerprint(input_files(s))
    set_seed(s.seed)
    splits = load_splits(s.dataset, s.data_dir)
    victim, _ = load_victim(s.victim_path, splits.spec, architecture=s.victim_arch, device=device)
    local = oracle is None
    calibrator = _calibrator(s) if local else None
    teachers, pate_sigma = _teachers(s, splits.spec, device) if local else (None, None)
    attack = _attack(s, splits, device, teachers, pate_sigma)
    if local:
        oracle = _local_oracle(s, splits, victim, device, inputs, teachers, pate_sigma)
    stolen, optimizer, generator = _copy(s, attack, splits.spec, device)
    if calibrator is not None:  # built before the run folder: the payer checks the pricing settings
        payer = PowPayer(mode=s.pow, puzzle=s.puzzle, subs=s.pow_subs, solver=s.solver, workers=s.workers,
                         timing_table=s.timing_table, timing_csv=s.timing_csv, resource=f"{s.dataset}-{s.mode}")
        oracle = PricedOracle(oracle, calibrator=calibrator, payer=payer, cost_column=cost_column(s.cost_measure),
                              query_batch=s.query_batch)
    pate = {"teachers": len(teachers), "sigma": pate_sigma} if teachers is not None else None
    try:
        with RunFolder(out_dir) as folder:
            state = _resume(s, folder, inputs, oracle=oracle, attack=attack, stolen=stolen, optimizer=optimizer,
                            generator=generator)
            state = _rounds(s, folder, state, splits=splits, victim=victim, device=device, oracle=oracle,
                            attack=attack, stolen=stolen, optimizer=optimizer, generator=generator,
                            inputs=inputs, progress=progress, tap=tap, pate=pate)
            folder.save_stolen(stolen.state_dict(), s.dataset)
            if state["oracle"]["queries"] >= s.budget:
                folder.mark_done(state, s.budget)
    finally:
        if local:  # an oracle passed in is its caller's to close
            oracle.close()
    return {"log": out_dir / "log.csv", "params": out_dir / "params.json", "final": state["rows"][-1],
            "calibrator": oracle.describe().get("calibrator")}


def _calibrator(s):
    """The calibrator for --calibration (None without one)."""
    if not s.calibration:
        return None
    baseline = calibration.load_baseline(s.calibration, cost_measure=s.cost_measure)
    return calibration.create(calibration.CalibrationConfig.of(s.as_dict()), baseline)


def _teachers(s, spec, device) -> tuple:
    """(the PATE teachers, their GNMax sigma) under a PATE measure, else (None, None)."""
    if s.cost_measure not in accountants.PATE_MEASURES:
        return None, None
    teachers, _ = load_teachers(s.teachers_path, spec, device=device)
    return teachers, accountants.pate_sigma(len(teachers), s.pate_sigma)


def _attack(s, splits, device, teachers, pate_sigma):
    """The mode's attack, with what it may know of the defence (the measure and its parameters)."""
    cost_params = (("k", s.k), ("sigma", s.sigma), ("delta", s.delta))
    if teachers is not None:
        cost_params += (("teachers", len(teachers)), ("pate_sigma", pate_sigma))
    attack = attacks.create(s.mode, AttackContext(
        splits.spec, splits.pool_x, s.budget, s.seed, s.data_dir, s.ood_pool, device=device,
        cost_measure=s.cost_measure, cost_params=cost_params, sampling=s.sampling, jacobian_cap=s.jacobian_cap,
        query_batch=s.query_batch, batch_size=s.batch_size, epochs=s.stolen_epochs,
        round_size=s.batches_per_round * s.query_batch, options=attacks.options_for(s.mode, s.as_dict())))
    if attack.soft_targets and s.victim_output != "probs":
        raise UserError(f"mode '{s.mode}' trains on the victim's probabilities; pass --victim_output probs")
    return attack


def _local_oracle(s, splits, victim, device, inputs, teachers, pate_sigma) -> VictimOracle:
    """The local victim behind a metered view, with the accountants over its training set."""
    answering = Victim(victim, device=device, output=s.victim_output)
    reps = _representations(answering, splits, s.reps_cache, f"{s.dataset}-{inputs['victim_path'][:16]}")
    ledger = accountants.build_ledger(reps, splits.victim_y, num_classes=splits.spec.num_classes, k=s.k,
                                      sigma=s.sigma, delta=s.delta, cap=bool(s.cap_rdp),
                                      conversion=s.rdp_conversion, seed=s.seed, pate_sigma=pate_sigma,
                                      ensemble_votes=teachers.votes if teachers is not None else None)
    return VictimOracle(victim, device=device, ledger=ledger, victim=answering)


def _copy(s, attack, spec, device) -> tuple:
    """(the stolen copy, its optimizer, the generator of its training order)."""
    arch = s.stolen_arch or type(attack).default_arch(spec) or default_stolen_arch(spec)
    stolen = architectures.create(arch, spec).to(device)
    optimizer = make_optimizer(stolen, optimizer=s.optimizer, lr=s.lr, momentum=s.momentum,
                               weight_decay=s.weight_decay)
    return stolen, optimizer, torch.Generator().manual_seed(s.seed)


def _resume(s, folder, inputs, *, oracle, attack, stolen, optimizer, generator) -> dict | None:
    """The saved state, restored into every part of the run (None: a new run; --fresh discards one)."""
    if s.fresh:
        folder.discard()
        return None
    state = folder.load(s.as_dict(), inputs, budget=s.budget)
    if state is None:
        return None
    if _keeps_queries(attack) and state["saved_queries"] != state["oracle"]["queries"]:
        raise UserError(f"{folder.dir} saved {state['saved_queries']} of its {state['oracle']['queries']} "
                        f"queries, but mode '{s.mode}' needs all of them to resume; pass --fresh to start over")
    stolen.load_state_dict(state["stolen"])
    optimizer.load_state_dict(state["optimizer"])
    oracle.load_state_dict(state["oracle"])
    attack.load_state_dict(state["attack"])
    attack.restore_history(state["xs"], state["answers"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    folder.write_outputs(state, LOG_COLUMNS)  # the log always agrees with the state
    log.info("resuming %s after %d queries", folder.dir, oracle.queries)
    return state


def _representations(victim, splits, cache, key: str) -> torch.Tensor:
    """The victim's log-softmax of its training set (the kNN accountant's points), cached in `cache` (a
    folder; None: no cache) by dataset, victim checkpoint hash and size, so a grid embeds it once."""
    if not cache:
        return victim.representations(splits.victim_x)
    path = Path(cache) / f"{key}-{len(splits.victim_x)}.reps.pt"
    if path.is_file():
        try:
            blob = safe_torch_load(path, "cached representations", "it is damaged")
            reps = blob.get("reps") if isinstance(blob, dict) else None
            if (blob.get("key") == key and isinstance(reps, torch.Tensor) and reps.dtype == torch.float32
                    and reps.shape == (len(splits.victim_x), splits.spec.num_classes) and torch.isfinite(reps).all()
                    and bool((reps <= 0).all())):  # log-probabilities of this victim's classes
                return reps
        except UserError:
            pass  # a damaged cache entry is recomputed and replaced
    reps = victim.representations(splits.victim_x)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"reps": reps, "key": key}, path)
    return reps


def _keeps_queries(attack) -> bool:
    return not isinstance(attack, TrainingAttack) or attack.keeps_queries


def _training_round(s, attack, oracle, stolen, query) -> None:
    """One round of an attack that trains itself: it must spend exactly the round's queries, no more."""
    n = min(attack.round_queries(s.batches_per_round * s.query_batch), s.budget - oracle.queries)
    target = oracle.queries + n

    def metered(x):
        if oracle.queries + len(x) > target:
            raise RuntimeError(f"mode '{s.mode}' asked for {len(x)} more queries, past its round's {n}")
        return query(x)

    attack.run_round(metered, stolen, n)
    if oracle.queries != target:
        raise RuntimeError(f"mode '{s.mode}' spent {oracle.queries - target + n} of its round's {n} queries")


def _rounds(s, folder, state, *, splits, victim, device, oracle, attack, stolen, optimizer, generator,
            inputs, progress, pate, tap=None) -> dict:
    """Run rounds until the budget is spent, committing each; returns the last committed state."""
    rows, xs, answers = (list(state[k]) for k in ("rows", "xs", "answers")) if state else ([], [], [])
    round_start = len(xs)
    pow_time, pow_work = (state["pow_time_s"], state["pow_work"]) if state else (0.0, 0.0)
    cost_col = cost_column(s.cost_measure)
    resolved = state["resolved"] if state else comparable(s.as_dict())  # paths as resolved when the run began
    victim_eval = predict_logits(victim, splits.eval_x, device).argmax(1)
    params = _metadata(s, oracle, pate)
    bar = tqdm(total=s.budget, initial=min(oracle.queries, s.budget), unit="query", disable=not progress,
               desc=f"{s.mode} on {s.dataset}")
    try:
        while oracle.queries < s.budget:
            q_prev, t_prev, started = oracle.queries, oracle.query_time_s, time.perf_counter()

            def query(x):
                if tap is not None:
                    tap(x)
                y = oracle.query(x)
                if _keeps_queries(attack):
                    xs.append(x)
                    answers.append(y)
                bar.update(len(x))
                return y

            _spend_round(s, attack, oracle, stolen, query)
            totals = oracle.totals()
            paid = oracle.settle(q_prev, t_prev)  # priced here, or by the server that answered
            pow_time, pow_work = pow_time + paid.seconds, pow_work + paid.work
            if isinstance(attack, TrainingAttack):  # it trained while it queried
                train_time = time.perf_counter() - started - (oracle.query_time_s - t_prev)
            else:
                train_time = _train(s, stolen, optimizer, generator, xs, answers, device)
            rows.append(_row(len(rows) + 1, totals, stolen, splits, victim_eval, device, priced=oracle.priced,
                             pow_time=pow_time, pow_work=pow_work, difficulty=paid.difficulty,
                             train_time=(rows[-1]["train_time_s"] if rows else 0.0) + train_time))
            bar.set_postfix(acc=f"{rows[-1]['accuracy']:.1f}", cost=f"{totals.get(cost_col, np.nan):.1f}")
            state = {
                "settings": s.as_dict(), "resolved": resolved, "inputs": inputs, "rows": rows,
                "saved_queries": sum(len(x) for x in xs), "round_hashes": state["round_hashes"] if state else [],
                "pow_time_s": pow_time, "pow_work": pow_work, "stolen": stolen.state_dict(),
                "optimizer": optimizer.state_dict(), "oracle": oracle.state_dict(), "attack": attack.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "params": params,
            }
            state = folder.commit(state, LOG_COLUMNS, xs=xs[round_start:], answers=answers[round_start:])
            round_start = len(xs)
    finally:
        bar.close()
    return state


def _spend_round(s, attack, oracle, stolen, query) -> None:
    """One round's queries: an attack that trains itself spends them its own way, a pool attack batch by batch."""
    if isinstance(attack, TrainingAttack):
        _training_round(s, attack, oracle, stolen, query)
        return
    for _ in range(s.batches_per_round):
        n = min(s.query_batch, s.budget - oracle.queries)
        if n <= 0:
            break
        x = attack.select(n, stolen)
        attack.observe(x, query(x))


def _train(s, stolen, optimizer, generator, xs, answers, device) -> float:
    """Train the copy on every answer so far (--stolen_epochs); returns the seconds it took."""
    start = time.perf_counter()
    if s.stolen_epochs:
        train_epochs(stolen, torch.cat([to_float(x) for x in xs]), torch.cat(answers), optimizer=optimizer,
                     epochs=s.stolen_epochs, batch_size=s.batch_size, device=device, generator=generator)
    return time.perf_counter() - start


def _row(number, totals, stolen, splits, victim_eval, device, *, priced, pow_time, pow_work, difficulty,
         train_time) -> dict:
    """One round's log row: the copy's accuracy and fidelity, the costs, and the times (PoW: NaN unpriced)."""
    pred = predict_logits(stolen, splits.eval_x, device).argmax(1)
    return {
        "round": number, "queries": totals["queries"],
        "accuracy": 100.0 * float((pred == splits.eval_y).float().mean()),
        "fidelity": 100.0 * float((pred == victim_eval).float().mean()),
        **{c: totals.get(c, np.nan) for c in accountants.COST_COLUMNS},  # pate: only with teachers
        "query_time_s": totals["query_time_s"],
        "pow_time_s": pow_time if priced else np.nan,
        "total_time_s": totals["query_time_s"] + pow_time if priced else np.nan,
        "pow_work": pow_work if priced else np.nan, "pow_difficulty": difficulty,
        "train_time_s": train_time,
    }
