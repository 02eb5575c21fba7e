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
from data.registry import create, load_splits, to_float
from extraction.config import AccountantConfig, AttackConfig, ExtractionConfig, TrainingConfig
from extraction.oracles import PricedOracle
from extraction.state import RunFolder, comparable, enclosing_run, fingerprint, input_files, run_file_of
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


def validate(config) -> None:
    """Readable errors for settings that cannot run, before anything is loaded or written (an
    ExtractionConfig, or a command's settings)."""
    c = _config(config)
    a, acc = c.attack, c.accountant
    if a.mode not in attacks.ATTACKS:
        raise UserError(f"unknown mode '{a.mode}'; valid modes: {', '.join(sorted(attacks.ATTACKS))}")
    checks.whole("--query_batch", a.query_batch, lo=1)
    checks.whole("--budget", a.budget, lo=1)
    if a.budget < a.query_batch:
        raise UserError(f"--budget {a.budget} is below one batch of --query_batch {a.query_batch}; "
                        f"raise --budget to at least {a.query_batch}")
    least = attacks.ATTACKS[a.mode].min_budget(create(c.run.dataset))
    if a.budget < least:
        raise UserError(f"'{a.mode}' needs at least {least} queries on '{c.run.dataset}' (its starting set), but "
                        f"--budget is {a.budget}; raise --budget to at least {least}")
    checks.whole("--batches_per_round", a.batches_per_round, lo=1)
    checks.whole("--stolen_epochs", c.training.stolen_epochs, lo=0)
    checks.whole("--batch_size", c.training.batch_size, lo=1)
    checks.whole("--k", acc.k, lo=1)
    checks.whole("--seed", c.run.seed, lo=0)
    checks.finite("--sigma", acc.sigma, lo=MIN_SIGMA, hi=1e6)
    if acc.pate_sigma is not None:
        checks.finite("--pate_sigma", acc.pate_sigma, lo=MIN_SIGMA, hi=1e6)
    checks.finite("--delta", acc.delta, lo=0, hi=1, lo_open=True, hi_open=True)
    cost_column(acc.cost_measure)
    for mode in attacks.ATTACKS:  # every mode's own flags, range-checked, even those this mode ignores
        attacks.options_for(mode, c.settings)
    outer = enclosing_run(c.run.out_dir)
    if outer is not None:
        raise UserError(f"--out_dir {c.run.out_dir} is inside the run folder {outer}, which holds that run alone "
                        f"(its rounds, state and log); choose a folder outside it")
    files = input_files(c)
    for name, path in files.items():
        reserved = run_file_of(Path(c.run.out_dir), path)
        if reserved:
            raise UserError(f"--{name} {path} is the run's own {reserved} in --out_dir {c.run.out_dir}, which the "
                            f"run writes; copy the file elsewhere first, or choose another --out_dir")
    if "calibration" in files:
        input_file(files["calibration"], "--calibration")
    if "timing_csv" in files:
        read_timing_csv(files["timing_csv"])  # says how to make a missing table


def _config(config) -> ExtractionConfig:
    """An ExtractionConfig as it is, or built from a command's settings."""
    return config if isinstance(config, ExtractionConfig) else ExtractionConfig.of(config.as_dict())


def _metadata(c: ExtractionConfig, oracle, pate) -> dict:
    pricing = oracle.describe()
    return run_metadata({**c.settings, "calibrator": pricing.get("calibrator"),
                         "pow_pricer": pricing.get("pow_pricer"), "pate": pate}, "extract")


def run_extraction(config, *, oracle=None, progress: bool = True, tap=None) -> dict:
    """Run (or resume) one extraction; returns a summary with the final row and the paths written.

    Everything that can be checked is checked before the run folder is touched: settings, input files,
    the dataset, the victim and the baseline. A failure leaves no new file behind. `oracle` (a
    models.oracle.Oracle) answers the queries; None builds the local one: the victim, its accountants, and
    with --calibration the calibrated PoW (PricedOracle). A server.client.RemoteOracle has a live server
    answer, account and price instead; the local victim then serves only to measure fidelity. The loop
    treats both alike. `tap(x)`, when given, sees every query batch as it is sent (sybil records the
    attack's query stream with it). `config` is an ExtractionConfig (a command's settings are turned into
    one)."""
    c = _config(config)
    validate(c)
    run, pw = c.run, c.pow
    out_dir = ensure_writable_dir(Path(run.out_dir), "--out_dir")
    device = resolve_device(run.device)
    inputs = fingerprint(input_files(c))
    set_seed(run.seed)
    splits = load_splits(run.dataset, run.data_dir)
    victim, _ = load_victim(run.victim_path, splits.spec, architecture=run.victim_arch, device=device)
    local = oracle is None
    calibrator = _calibrator(c) if local else None
    teachers, pate_sigma = _teachers(c.accountant, splits.spec, device) if local else (None, None)
    attack = _attack(c, splits, device, teachers, pate_sigma)
    if local:
        oracle = _local_oracle(c, splits, victim, device, inputs, teachers, pate_sigma)
    stolen, optimizer, generator = _copy(c, attack, splits.spec, device)
    if calibrator is not None:  # built before the run folder: the payer checks the pricing settings
        payer = PowPayer(mode=pw.pow, puzzle=pw.puzzle, subs=pw.pow_subs, solver=pw.solver, workers=pw.workers,
                         timing_table=pw.timing_table, timing_csv=pw.timing_csv,
                         resource=f"{run.dataset}-{c.attack.mode}")
        oracle = PricedOracle(oracle, calibrator=calibrator, payer=payer,
                              cost_column=cost_column(c.accountant.cost_measure), query_batch=c.attack.query_batch)
    pate = {"teachers": len(teachers), "sigma": pate_sigma} if teachers is not None else None
    try:
        with RunFolder(out_dir) as folder:
            state = _resume(c, folder, inputs, oracle=oracle, attack=attack, stolen=stolen, optimizer=optimizer,
                            generator=generator)
            state = _rounds(c, folder, state, splits=splits, victim=victim, device=device, oracle=oracle,
                            attack=attack, stolen=stolen, optimizer=optimizer, generator=generator,
                            inputs=inputs, progress=progress, tap=tap, pate=pate)
            folder.save_stolen(stolen.state_dict(), run.dataset)
            if state["oracle"]["queries"] >= c.attack.budget:
                folder.mark_done(state, c.attack.budget)
    finally:
        if local:  # an oracle passed in is its caller's to close
            oracle.close()
    return {"log": out_dir / "log.csv", "params": out_dir / "params.json", "final": state["rows"][-1],
            "calibrator": oracle.describe().get("calibrator")}


def _calibrator(c: ExtractionConfig):
    """The calibrator for --calibration (None without one)."""
    if not c.pow.calibration:
        return None
    baseline = calibration.load_baseline(c.pow.calibration, cost_measure=c.accountant.cost_measure)
    return calibration.create(c.pow.pricing, baseline)


def _teachers(acc: AccountantConfig, spec, device) -> tuple:
    """(the PATE teachers, their GNMax sigma) under a PATE measure, else (None, None)."""
    if acc.cost_measure not in accountants.PATE_MEASURES:
        return None, None
    teachers, _ = load_teachers(acc.teachers_path, spec, device=device)
    return teachers, accountants.pate_sigma(len(teachers), acc.pate_sigma)


def _attack(c: ExtractionConfig, splits, device, teachers, pate_sigma):
    """The mode's attack, with what it may know of the defence (the measure and its parameters)."""
    a, acc = c.attack, c.accountant
    cost_params = (("k", acc.k), ("sigma", acc.sigma), ("delta", acc.delta))
    if teachers is not None:
        cost_params += (("teachers", len(teachers)), ("pate_sigma", pate_sigma))
    attack = attacks.create(a.mode, AttackContext(
        splits.spec, splits.pool_x, a.budget, c.run.seed, c.run.data_dir, a.ood_pool, device=device,
        cost_measure=acc.cost_measure, cost_params=cost_params, sampling=a.sampling, jacobian_cap=a.jacobian_cap,
        query_batch=a.query_batch, batch_size=c.training.batch_size, epochs=c.training.stolen_epochs,
        round_size=a.batches_per_round * a.query_batch, options=a.options))
    if attack.soft_targets and c.run.victim_output != "probs":
        raise UserError(f"mode '{a.mode}' trains on the victim's probabilities; pass --victim_output probs")
    return attack


def _local_oracle(c: ExtractionConfig, splits, victim, device, inputs, teachers, pate_sigma) -> VictimOracle:
    """The local victim behind a metered view, with the accountants over its training set."""
    acc = c.accountant
    answering = Victim(victim, device=device, output=c.run.victim_output)
    reps = _representations(answering, splits, acc.reps_cache, f"{c.run.dataset}-{inputs['victim_path'][:16]}")
    ledger = accountants.build_ledger(reps, splits.victim_y, num_classes=splits.spec.num_classes, k=acc.k,
                                      sigma=acc.sigma, delta=acc.delta, cap=bool(acc.cap_rdp),
                                      conversion=acc.rdp_conversion, seed=c.run.seed, pate_sigma=pate_sigma,
                                      ensemble_votes=teachers.votes if teachers is not None else None)
    return VictimOracle(victim, device=device, ledger=ledger, victim=answering)


def _copy(c: ExtractionConfig, attack, spec, device) -> tuple:
    """(the stolen copy, its optimizer, the generator of its training order)."""
    t = c.training
    arch = t.stolen_arch or type(attack).default_arch(spec) or default_stolen_arch(spec)
    stolen = architectures.create(arch, spec).to(device)
    optimizer = make_optimizer(stolen, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
                               weight_decay=t.weight_decay)
    return stolen, optimizer, torch.Generator().manual_seed(c.run.seed)


def _resume(c: ExtractionConfig, folder, inputs, *, oracle, attack, stolen, optimizer, generator) -> dict | None:
    """The saved state, restored into every part of the run (None: a new run; --fresh discards one)."""
    if c.run.fresh:
        folder.discard()
        return None
    state = folder.load(c.identity(), inputs, budget=c.attack.budget)
    if state is None:
        return None
    if _keeps_queries(attack) and state["saved_queries"] != state["oracle"]["queries"]:
        raise UserError(f"{folder.dir} saved {state['saved_queries']} of its {state['oracle']['queries']} "
                        f"queries, but mode '{c.attack.mode}' needs all of them to resume; pass --fresh to start over")
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


def _training_round(a: AttackConfig, attack, oracle, stolen, query) -> None:
    """One round of an attack that trains itself: it must spend exactly the round's queries, no more."""
    n = min(attack.round_queries(a.batches_per_round * a.query_batch), a.budget - oracle.queries)
    target = oracle.queries + n

    def metered(x):
        if oracle.queries + len(x) > target:
            raise RuntimeError(f"mode '{a.mode}' asked for {len(x)} more queries, past its round's {n}")
        return query(x)

    attack.run_round(metered, stolen, n)
    if oracle.queries != target:
        raise RuntimeError(f"mode '{a.mode}' spent {oracle.queries - target + n} of its round's {n} queries")


def _rounds(c: ExtractionConfig, folder, state, *, splits, victim, device, oracle, attack, stolen, optimizer, generator,
            inputs, progress, pate, tap=None) -> dict:
    """Run rounds until the budget is spent, committing each; returns the last committed state."""
    rows, xs, answers = (list(state[k]) for k in ("rows", "xs", "answers")) if state else ([], [], [])
    round_start = len(xs)
    pow_time, pow_work = (state["pow_time_s"], state["pow_work"]) if state else (0.0, 0.0)
    a = c.attack
    cost_col = cost_column(c.accountant.cost_measure)
    resolved = state["resolved"] if state else comparable(c.settings)  # paths as resolved when the run began
    identity = state["identity"] if state and "identity" in state else comparable(c.identity())
    victim_eval = predict_logits(victim, splits.eval_x, device).argmax(1)
    params = _metadata(c, oracle, pate)
    bar = tqdm(total=a.budget, initial=min(oracle.queries, a.budget), unit="query", disable=not progress,
               desc=f"{a.mode} on {c.run.dataset}")
    try:
        while oracle.queries < a.budget:
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

            _spend_round(a, attack, oracle, stolen, query)
            totals = oracle.totals()
            paid = oracle.settle(q_prev, t_prev)  # priced here, or by the server that answered
            pow_time, pow_work = pow_time + paid.seconds, pow_work + paid.work
            if isinstance(attack, TrainingAttack):  # it trained while it queried
                train_time = time.perf_counter() - started - (oracle.query_time_s - t_prev)
            else:
                train_time = _train(c.training, stolen, optimizer, generator, xs, answers, device)
            rows.append(_row(len(rows) + 1, totals, stolen, splits, victim_eval, device, priced=oracle.priced,
                             pow_time=pow_time, pow_work=pow_work, difficulty=paid.difficulty,
                             train_time=(rows[-1]["train_time_s"] if rows else 0.0) + train_time))
            bar.set_postfix(acc=f"{rows[-1]['accuracy']:.1f}", cost=f"{totals.get(cost_col, np.nan):.1f}")
            state = {
                "settings": c.settings, "resolved": resolved, "identity": identity, "inputs": inputs, "rows": rows,
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


def _spend_round(a: AttackConfig, attack, oracle, stolen, query) -> None:
    """One round's queries: an attack that trains itself spends them its own way, a pool attack batch by batch."""
    if isinstance(attack, TrainingAttack):
        _training_round(a, attack, oracle, stolen, query)
        return
    for _ in range(a.batches_per_round):
        n = min(a.query_batch, a.budget - oracle.queries)
        if n <= 0:
            break
        x = attack.select(n, stolen)
        attack.observe(x, query(x))


def _train(t: TrainingConfig, stolen, optimizer, generator, xs, answers, device) -> float:
    """Train the copy on every answer so far (--stolen_epochs); returns the seconds it took."""
    start = time.perf_counter()
    if t.stolen_epochs:
        train_epochs(stolen, torch.cat([to_float(x) for x in xs]), torch.cat(answers), optimizer=optimizer,
                     epochs=t.stolen_epochs, batch_size=t.batch_size, device=device, generator=generator)
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
