"""Building the guarded prediction service from files: the victim, its accountant, the split-proof
pricer and the puzzle pricer every replica shares. serve, sybil, the frontier and the benchmarks build
their services here, from a DeploymentConfig (a typed config: parameters.py holds every default)."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import UserError
from common.runtime import resolve_device
from data.registry import load_splits
from models.checkpoint import check_victim, load_victim
from models.oracle import Victim
from models.teachers import check_teachers, load_teachers
from pow import calibration, kinds, timing
from pow.solver import default_workers, profile_solver
from privacy import accountants
from server.service import PredictionService, ServiceConfig, per_query_column


@dataclass(frozen=True)
class DeploymentConfig:
    """Everything build_service reads: the data and victim, the accountant, the calibration, the puzzle
    and the service's limits (the flags of the same names)."""
    dataset: str
    data_dir: str
    device: str
    seed: int
    victim_path: str
    victim_arch: str | None
    victim_output: str
    teachers_path: str
    pate_sigma: float | None
    cost_measure: str
    log_costs: str | None
    k: int
    sigma: float
    delta: float
    cap_rdp: bool
    rdp_conversion: str
    calibration: str | None
    calibration_mode: str
    account_factor: float
    anonymous: bool
    workers: int | None
    puzzle: str
    pow_subs: int
    timing_table: str
    timing_csv: str
    max_batch: int
    ttl_s: float
    rate: float
    burst: int
    calibrator: calibration.CalibrationConfig
    query_price: calibration.QueryPriceConfig

    @classmethod
    def of(cls, settings: dict, **changes) -> "DeploymentConfig":
        """The config from a settings dict (parameters.Settings.as_dict()), with `changes` applied."""
        values = {**settings, **changes}
        nested = {"calibrator": calibration.CalibrationConfig.of(values),
                  "query_price": calibration.QueryPriceConfig.of(values)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and f.name not in nested]
        if missing:
            raise UserError(f"a service needs the settings {missing}; build them with main.parse(['serve', ...])")
        return cls(**{f.name: nested[f.name] if f.name in nested else values[f.name] for f in dataclasses.fields(cls)})


def check_serve(config: DeploymentConfig):
    """The settings' own errors, before any file is opened or made; returns the calibrator."""
    if not kinds.get(config.puzzle).signed:
        raise UserError(f"the server issues signed {' or '.join(sorted(kinds.SERVED))} challenges; pass --puzzle "
                        f"{' or '.join(kinds.SERVED)}")
    if not config.calibration:
        raise UserError("serve needs --calibration: a legitimate user's log.csv (a standard run's) to price against")
    if config.calibration_mode != "relative":
        raise UserError("the server prices each batch after it has seen it, with --calibration_mode relative (the "
                        "paper's mode prices 1,000-query steps, which keys can split); drop --calibration_mode paper")
    config.query_price.checked()
    for measure in log_measures(config):
        accountants.cost_column(measure)
    return calibration.create(config.calibrator,
                              calibration.load_baseline(config.calibration, cost_measure=config.cost_measure))


def check_model_files(config: DeploymentConfig) -> None:
    """The victim checkpoint and (where a PATE cost is accounted) the teacher file, read and checked as
    build_service loads them but without building their models, so that serve fails on a missing or
    corrupt one, or one for another dataset, before it makes a store or binds a port."""
    check_victim(config.victim_path, config.dataset)
    if any(m in accountants.PATE_MEASURES for m in log_measures(config)):
        check_teachers(config.teachers_path, config.dataset)


def log_measures(config: DeploymentConfig) -> list:
    """The measures the server accounts: the one it prices with, and --log_costs."""
    extra = [m for m in str(config.log_costs or "").split(",") if m]
    return [config.cost_measure, *[m for m in extra if m != config.cost_measure]]


LEGIT_CHUNK = 256  # held-out images per forward pass when the legitimate per-query costs are measured


def legit_costs(victim, images, make_ledger, column: str):
    """Each held-out image's own cost under the priced measure (the legitimate per-query distribution)."""
    parts = []
    for start in range(0, len(images), LEGIT_CHUNK):
        x = images[start:start + LEGIT_CHUNK]
        parts.append(np.asarray(make_ledger().add(victim.log_probs(x), images=x)[column], dtype=np.float64))
    return np.concatenate(parts)


def shared_pricer(config: DeploymentConfig, store, workers: int):
    """The puzzle pricer every replica on `store` shares: --timing_table measured sets it (the operator's
    table); live measures this machine's solver only when the store holds none yet, and the first
    replica's measurement is kept for all."""
    name = f"timing:{config.puzzle}:{config.pow_subs}"

    def make():
        return timing.make_pricer(config.puzzle, table=config.timing_table, solver="python", workers=workers,
                                  timing_csv=config.timing_csv,
                           measure=lambda kind, w: profile_solver(kind, workers=w, subs=config.pow_subs, seconds=1.0))

    if config.timing_table == "measured":
        pricer = make()
        store.set_shared(name, json.dumps({"rate": pricer.rate, "overhead_s": pricer.overhead_s,
                                           "source": pricer.source}))
        return pricer
    stored = store.shared_value(name)
    if stored is None:
        pricer = make()
        stored = store.shared(name, json.dumps({"rate": pricer.rate, "overhead_s": pricer.overhead_s,
                                                "source": pricer.source}))
    value = json.loads(stored)
    return timing.PuzzlePricer(config.puzzle, rate=value["rate"], overhead_s=value["overhead_s"],
                        source=f"shared ({value['source']})")


def build_service(config: DeploymentConfig, store, key: bytes, *, check_solution=None, puzzle_pricer=None):
    """The PredictionService for the settings: victim, ledger factory, split-proof and puzzle pricers."""
    calibrator = check_serve(config)
    column = accountants.cost_column(config.cost_measure)
    device = resolve_device(config.device)
    splits = load_splits(config.dataset, config.data_dir)
    model, _ = load_victim(config.victim_path, splits.spec, architecture=config.victim_arch, device=device)
    victim = Victim(model, device=device, output=config.victim_output)
    teachers, pate_sigma = None, None
    if any(m in accountants.PATE_MEASURES for m in log_measures(config)):  # priced or logged: both need them
        teachers, _ = load_teachers(config.teachers_path, splits.spec, device=device)
        pate_sigma = accountants.pate_sigma(len(teachers), config.pate_sigma)
    make_ledger = accountants.ledger_factory(
        victim.representations(splits.victim_x), splits.victim_y, num_classes=splits.spec.num_classes, k=config.k,
        sigma=config.sigma, delta=config.delta, cap=bool(config.cap_rdp), conversion=config.rdp_conversion,
        seed=config.seed,
        ensemble_votes=teachers.votes if teachers is not None else None, pate_sigma=pate_sigma,
        measures=log_measures(config))
    columns = list(make_ledger().columns)
    if json.loads(store.shared("ledger", json.dumps(columns))) != columns:
        raise UserError(f"{store.describe} keeps accounts of the costs {store.shared('ledger', '')}, not {columns}; "
                        f"serve it with the --cost_measure and --log_costs it was made with, or give a new --state")
    with torch.no_grad():  # not set_grad_enabled(False): sybil and frontier train attacks in this thread after
        held_out = legit_costs(victim, splits.eval_x, make_ledger, per_query_column(column))
    weights = calibration.QueryWeights(held_out, max_weight=calibrator.max_factor / calibrator.budget,
                                       config=config.query_price)
    pricer = calibration.SplitProofPricer(calibrator, weights, account_factor=config.account_factor,
                                          anonymous=bool(config.anonymous))
    puzzle_pricer = puzzle_pricer or shared_pricer(config, store, config.workers or default_workers())
    spec = splits.spec
    service = PredictionService(
        victim=victim, item_shape=(spec.channels, spec.size, spec.size), make_ledger=make_ledger,
        pricer=pricer, puzzle_pricer=puzzle_pricer, store=store, key=key, check_solution=check_solution,
        config=ServiceConfig(puzzle=config.puzzle, subs=config.pow_subs, max_batch=config.max_batch, ttl_s=config.ttl_s,
                             cost_column=column, rate=config.rate, burst=config.burst,
                             anonymous=bool(config.anonymous)))
    return service, {"dataset": config.dataset, "puzzle": config.puzzle, "cost_measure": config.cost_measure,
                     "calibration": "relative, per query", "output": config.victim_output,
                     "max_batch": config.max_batch,
                     "anonymous": bool(config.anonymous), "solve_rate": puzzle_pricer.rate}


def body_limit(spec_shape: tuple, max_batch: int) -> int:
    """The largest valid predict body: float32 inputs of a full batch, base64, plus the solution."""
    return int(max_batch * np.prod(spec_shape) * 4 * 4 / 3) + 256 * 1024


ROUTES_PER_CORE = 2  # request threads per core, by default


def size_threads(threads: int | None, processes: int = 1) -> tuple:
    """(route threads, torch threads per route) of each of `processes` server processes. By default twice
    the cores in all, one torch thread each: a route waiting on its commit's fsync, or for its next
    request, leaves a core to another (on 2 cores this served 70% of bare inference's requests/s where
    one route per core served 63%)."""
    cores = os.cpu_count() or 1
    threads = threads or max(1, ROUTES_PER_CORE * cores // processes)
    per = max(1, cores // (threads * processes))
    torch.set_num_threads(per)
    return threads, per


