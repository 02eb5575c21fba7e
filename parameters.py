"""Every default, the per-dataset presets, the flag families the commands' parsers share, the recipes (the
commands whose lines other commands write and run), and the read-only settings object. Each command adds
its own flags (commands/*.py: add_arguments); main.py builds the parser from them.

Flags left unset fall back to the dataset's preset, then to the global default. After resolve(),
nothing writes to the settings: they are read-only (Settings raises on assignment).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from attacks import ATTACKS
from attacks.knockoff import SAMPLINGS
from common import checks
from common.errors import ConfigError
from data.ood import OOD_POOLS
from data.profiles import PROFILES
from data.registry import DATASETS, DEFAULT_DATASET
from extraction.config import AccountantConfig, AttackConfig, PowConfig, RunConfig, TrainingConfig
from extraction.cost_growth import GrowthConfig
from models.architectures import ARCHITECTURES
from models.oracle import OUTPUTS
from models.training import LR_SCHEDULES, MAX_LR
from pow.calibration import CALIBRATIONS, PAPER_BASE, CalibrationConfig, QueryPriceConfig
from pow.pricing import POW_MODES
from pow.solver import SOLVERS
from pow.timing import PUZZLES, TABLES
from privacy.accountants import COST_MEASURES
from privacy.rdp import CONVERSIONS, MIN_SIGMA
from server.service import ServiceConfig

SOFT_TARGET_MODES = sorted(name for name, cls in ATTACKS.items() if cls.soft_targets)

_MNIST_LIKE = dict(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=1e-4, batch_size=64,
                   k=300, sigma=28.0, delta=1e-5, stolen_epochs=10, victim_shift=2,
                   teacher_epochs=40)
_RGB = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128,
            k=300, sigma=28.0, delta=1e-5, stolen_epochs=10, victim_shift=4,
            teacher_epochs=60)

#: per-dataset presets: training hyper-parameters and the private-kNN accountant (the paper's values)
PRESETS = {
    "mnist-5k": {**_MNIST_LIKE, "victim_epochs": 20},
    # the paper's MNIST victim: SGD 0.1/0.5/1e-4, batch 64, ReduceLROnPlateau, no augmentation; at most
    # the authors' 50 epochs, stopping once the loss has plateaued at two successive rates
    "mnist": {**_MNIST_LIKE, "victim_epochs": 50, "lr_schedule": "plateau", "victim_shift": 0},
    "fashion-mnist": {**_MNIST_LIKE, "victim_epochs": 12},
    "svhn": {**_RGB, "victim_epochs": 50, "delta": 1e-6},
    "cifar10": {**_RGB, "victim_epochs": 200},
    "folder": {**_RGB, "victim_epochs": 30},
}

#: the typed configs whose field defaults are the flags' defaults: each is written there, and only there
CONFIG_DEFAULTS = (RunConfig, AttackConfig, AccountantConfig, PowConfig, TrainingConfig, CalibrationConfig,
                   QueryPriceConfig, ServiceConfig)
#: config fields that are no flag of that name: the mode's options and the calibration (their own fields are),
#: --base (its default depends on --calibration_mode), the service's subs (--pow_subs) and cost column
_NOT_FLAGS = {"options", "pricing", "base", "subs", "cost_column"}


def config_defaults(configs=CONFIG_DEFAULTS) -> dict:
    """{flag name: default} of the configs' fields that have one (the others come from the dataset preset
    or are derived); two configs that name one flag must give it one default."""
    found, owner = {}, {}
    for cls in configs:
        for f in dataclasses.fields(cls):
            if f.name in _NOT_FLAGS or f.default is dataclasses.MISSING:
                continue
            if f.name in found and found[f.name] != f.default:
                raise ConfigError(f"--{f.name} has two defaults: {found[f.name]!r} ({owner[f.name]}) and "
                                  f"{f.default!r} ({cls.__name__}); keep one")
            found[f.name], owner[f.name] = f.default, cls.__name__
    return found


#: global defaults (flags whose default does not depend on the dataset): the commands' own flags here, the
#: rest from the configs above
DEFAULTS = dict(
    base=None, votes=None, log=None,
    out=None, runs=None, queries=1000, sigmas="28,10", datasets="mnist-5k,fashion-mnist", epochs=None, bases=None,
    budgets=None, stamp=None, solution=None, challenge=None,
    resource="client", bits=None, work=None, key=None, min_work=1.0, puzzles="hashcash,sha256,scrypt",
    max_seconds=1.0, trials=20, attacks=None, plot=None, victim_dir="checkpoints",
    insecure_dev_key=False, overwrite=False, num_models=None, lr_schedule="cosine", plateau_patience=2,
    host="127.0.0.1", port=8000, state="sqlite:///server-state.db", key_file=None,
    threads=None, processes=1, worker_timeout=30.0, server=None, api_key=None, input=None, action=None, name=None,
    group=None, accounts="1,16,256,1024", batches="1,16,64,256", log_costs=None, sybil_runs=None,
    quick=False, modes=None, seeds=1, jobs=1, list=False, slurm=False,
    report_only=None, victims=None, ood_pools=None, dfme_budget=None,
)
_twice = DEFAULTS.keys() & config_defaults().keys()
if _twice:
    raise ConfigError(f"defaults written twice, in parameters.DEFAULTS and in a config: {sorted(_twice)}")
DEFAULTS.update(config_defaults())
#: every attack's own options (Options dataclasses): their defaults join DEFAULTS, their flags join extract
MODE_OPTIONS = {f.name: (name, f) for name, cls in sorted(ATTACKS.items()) if cls.Options is not None
                for f in dataclasses.fields(cls.Options)}
DEFAULTS.update({key: f.default for key, (_, f) in MODE_OPTIONS.items()})


#: the frontier's own defaults (a smaller grid than sybil's; every attacker and rule)
FRONTIER_DEFAULTS = dict(
    attackers="copycat,knockoff,dfme,worstcaseood,worstcase,entropyrev,jacobian,jacobiantr,mixmatch",
    profiles=",".join(PROFILES), deficit_tolerances="off,6,3", budget=2048, accounts="1,16,256",
    batches="1,64,256", stolen_epochs=1, out_dir="results/frontier")


def default_text(key: str) -> str:
    """'(default: V)' for a help text, V the flag's one default (a config's, or DEFAULTS')."""
    value = DEFAULTS[key]
    return f"(default: {value:g})" if isinstance(value, float) else f"(default: {value})"


def pool_arg(text):
    """An argparse type: a named out-of-distribution pool, or a folder of images."""
    if text.strip() and (text in OOD_POOLS or Path(text).is_dir()):
        return text
    raise argparse.ArgumentTypeError(f"'{text}' is neither a pool ({', '.join(sorted(OOD_POOLS))}) nor a folder of "
                                     f"images")


def _tolerance(text):
    """An argparse type: 'off' or a finite non-negative number."""
    if text == "off":
        return text
    try:
        return NONNEG_FLOAT(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is neither 'off' (one-sided) nor a number of standard "
                                         f"deviations: {exc}") from None


def number(cast, lo=None, hi=None, *, lo_open=False, hi_open=False):
    """An argparse type: a number that is finite and in range (NaN and infinities are refused)."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole ' if cast is int else ''}number") from None
        try:
            if cast is int:
                return checks.whole("the value", value, lo=lo, hi=hi)
            return checks.finite("the value", value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = "number"
    return parse


def listed(item, what: str):
    """An argparse type: a comma-separated, non-empty list; each item passes `item` (returns the joined text)."""
    def parse(text):
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"needs at least one {what}, comma-separated; got '{text}'")
        return ",".join(str(item(p)) for p in parts)
    parse.__name__ = "list"
    return parse


def one_of(valid, what: str):
    def check(name):
        if name not in valid:
            raise argparse.ArgumentTypeError(f"unknown {what} '{name}'; valid: {', '.join(sorted(valid))}")
        return name
    return check


POS_INT = number(int, 1)
NONNEG_INT = number(int, 0, 2 ** 63 - 1)
POS_FLOAT = number(float, 0, lo_open=True)
NONNEG_FLOAT = number(float, 0)
DATASET_NAMES = listed(one_of(DATASETS, "dataset"), "dataset")
PUZZLE_NAMES = listed(one_of(PUZZLES, "puzzle"), "puzzle")


class Settings:
    """Read-only, attribute-style settings of one command."""
    __slots__ = ("_values",)

    def __init__(self, values: dict):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting '{name}'") from None

    def __setattr__(self, name, value):
        raise AttributeError("settings are read-only; build new ones with replace()")

    def replace(self, **changes) -> "Settings":
        return Settings({**self._values, **changes})

    def as_dict(self) -> dict:
        return dict(self._values)

    def __repr__(self):
        return f"Settings({self._values!r})"


def preset_text(key: str) -> str:
    vals = {name: p[key] for name, p in PRESETS.items()}
    return "default: per-dataset preset (" + ", ".join(f"{n}: {v}" for n, v in vals.items()) + ")"


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help=f"one of: {', '.join(DATASETS)} (default: {DEFAULT_DATASET})")
    p.add_argument("--data_dir", default=None,
                   help=f"where datasets are (or are downloaded to) {default_text('data_dir')}")
    p.add_argument("--seed", type=NONNEG_INT, default=None,
                   help=f"random seed; the same seed repeats a run {default_text('seed')}")
    p.add_argument("--device", default=None,
                   help=f"auto, cpu, cuda or cuda:N (default: {DEFAULTS['device']} = CUDA when present)")


def add_victim(p: argparse.ArgumentParser) -> None:
    p.add_argument("--victim_path", default=None,
                   help="victim checkpoint (default: checkpoints/DATASET-victim.pt)")
    p.add_argument("--victim_arch", default=None, choices=sorted(ARCHITECTURES),
                   help="victim architecture (default: mnistnet for 28x28, resnet34_8x for 32x32x3)")


def add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--optimizer", default=None, choices=["sgd", "adam"], help=preset_text("optimizer"))
    p.add_argument("--lr", type=number(float, 0, MAX_LR, lo_open=True), default=None, help=preset_text("lr"))
    p.add_argument("--momentum", type=number(float, 0, 1, hi_open=True), default=None, help=preset_text("momentum"))
    p.add_argument("--weight_decay", type=number(float, 0, 1), default=None, help=preset_text("weight_decay"))
    p.add_argument("--batch_size", type=POS_INT, default=None, help=preset_text("batch_size"))


def add_accountant(p: argparse.ArgumentParser, with_knn: bool = True) -> None:
    if with_knn:
        p.add_argument("--k", type=POS_INT, default=None, help=preset_text("k") + "; private-kNN neighbours")
    p.add_argument("--sigma", type=number(float, MIN_SIGMA, 1e6), default=None,
                   help=preset_text("sigma") + "; GNMax noise")
    p.add_argument("--delta", type=number(float, 0, 1, lo_open=True, hi_open=True), default=None,
                   help=preset_text("delta"))
    p.add_argument("--cap_rdp", action="store_true", default=None,
                   help="cap the data-dependent RDP at the data-independent bound (default: off, as the paper)")
    p.add_argument("--rdp_conversion", default=None, choices=CONVERSIONS,
                   help="RDP to (eps, delta): classic (the paper's) or improved (Balle et al. 2020) "
                        f"{default_text('rdp_conversion')}")


def add_pate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teachers_path", default=None,
                   help="PATE teacher ensemble from train-teachers (default: checkpoints/DATASET-teachers.pt)")
    p.add_argument("--pate_sigma", type=number(float, MIN_SIGMA, 1e6), default=None,
                   help="GNMax noise over the teachers' votes (default: 0.04 per teacher, the paper's ratio: "
                        "10 for 250 MNIST teachers, 2 for 50 CIFAR10 teachers)")


#: commands whose --calibration_mode defaults to another mode than CalibrationConfig's (resolve() sets it)
CALIBRATION_MODE_OF = {"pow-table": "paper"}  # the paper's own table, priced by the paper's calibration


def add_calibration(p: argparse.ArgumentParser) -> None:
    mode = CALIBRATION_MODE_OF.get(p.prog.split()[-1], CalibrationConfig.calibration_mode)
    p.add_argument("--cost_measure", default=None, choices=sorted(COST_MEASURES),
                   help="cumulative cost the calibrator reads: knn=privacy_cost, knn_eps=privacy_eps, "
                        "entropy=entropy_cost, gap=gap_cost (default: entropy, chosen by measured separation)")
    p.add_argument("--calibration_mode", default=None, choices=sorted(CALIBRATIONS),
                   help="relative (legitimate users pay a set share of their query time) or paper "
                        f"(base ** |cost - expected| seconds per 1,000 queries) (default: {mode})")
    p.add_argument("--base", type=number(float, 1, lo_open=True), default=None,
                   help=f"exponential base (default: {PAPER_BASE:g} paper; {CalibrationConfig.base:g} relative, per "
                        f"legitimate batch of excess)")
    p.add_argument("--pow_budget", type=POS_FLOAT, default=None,
                   help="relative: a legitimate user's PoW time as a share of their query time "
                        f"(default: {CalibrationConfig.pow_budget})")
    p.add_argument("--tolerance", type=NONNEG_FLOAT, default=None,
                   help="relative: excess ignored, in legitimate-spread standard deviations "
                        f"(default: {CalibrationConfig.tolerance})")
    p.add_argument("--deficit_tolerance", type=NONNEG_FLOAT, default=None,
                   help="relative: also price a cumulative cost BELOW the legitimate line by more than this many "
                        "standard deviations (the two-sided rule, as the paper's |cost - expected|); "
                        "default: off, one-sided (see the README's frontier)")
    p.add_argument("--max_factor", type=POS_FLOAT, default=None,
                   help="relative: most PoW time per batch, in legitimate query times per batch "
                        f"(default: {CalibrationConfig.max_factor:g})")
    p.add_argument("--min_s", type=POS_FLOAT, default=None,
                   help=f"paper: least extra seconds per step (default: {CalibrationConfig.min_s:g})")
    p.add_argument("--max_s", type=POS_FLOAT, default=None,
                   help="paper: most extra seconds per step, the slowest measured puzzle "
                        f"(default: {CalibrationConfig.max_s:.2f})")


def add_puzzle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--puzzle", default=None, choices=PUZZLES,
                   help="hashcash (SHA-1 bits), sha256 (numeric target) or scrypt (memory-hard numeric "
                        f"target) {default_text('puzzle')}")
    add_solver(p)


def add_solver(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pow_subs", type=number(int, 1, 4096), default=None,
                   help=f"sub-solutions per target puzzle; solve-time CV falls as 1/sqrt(n) {default_text('pow_subs')}")
    p.add_argument("--solver", default=None, choices=SOLVERS,
                   help=f"hashcash client: python or native (the hashcash tool) {default_text('solver')}")
    p.add_argument("--workers", type=number(int, 1, 1024), default=None, help="solver processes (default: all cores)")


def add_stamp_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resource", default=None, help="resource the puzzle is bound to (default: client)")
    p.add_argument("--bits", type=number(int, 1, 160), default=None,
                   help="hashcash: leading zero bits (made or required)")
    p.add_argument("--key", default=None,
                   help="HMAC key of the server, at least 16 characters (default: $POW_SECRET; no built-in key)")
    p.add_argument("--insecure_dev_key", action="store_true", default=None,
                   help="use a fixed, public development key when no key is given; anyone can forge "
                        "challenges with it, so never in production (default: off)")


def add_pow(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pow", default=None, choices=POW_MODES,
                   help="simulated: add each puzzle's expected solve time; real: solve every batch's puzzle "
                        f"and add the measured time {default_text('pow')}")
    add_puzzle(p)
    p.add_argument("--timing_table", default=None, choices=TABLES,
                   help="seconds -> difficulty: live (rate measured at start), measured (--timing_csv from "
                        f"pow-calibrate) or paper (the paper's hashcash table) {default_text('timing_table')}")
    p.add_argument("--timing_csv", default=None, help=f"pow-calibrate's CSV {default_text('timing_csv')}")


def add_extraction(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=POS_INT, default=None,
                   help=f"queries the attacker may send {default_text('budget')}")
    p.add_argument("--query_batch", type=POS_INT, default=None, help=f"queries per batch {default_text('query_batch')}")
    p.add_argument("--batches_per_round", type=POS_INT, default=None,
                   help=f"batches between logged rounds; the stolen model trains once a round "
                        f"{default_text('batches_per_round')}")
    p.add_argument("--stolen_arch", default=None, choices=sorted(ARCHITECTURES),
                   help="architecture of the stolen copy (default: mnistnet for 28x28, resnet18 for 32x32x3)")
    p.add_argument("--stolen_epochs", type=NONNEG_INT, default=None,
                   help=preset_text("stolen_epochs") + "; epochs on all answers so far, each round")
    p.add_argument("--victim_output", default=None, choices=OUTPUTS,
                   help=f"what the API answers (default: {DEFAULTS['victim_output']}; probs for knockoff, which trains "
                        f"on them)")
    p.add_argument("--ood_pool", default=None, type=pool_arg,
                   help="natural out-of-distribution images for copycat and knockoff: a pool name, or a folder of "
                        "images (e.g. CIFAR-10's JPEGs; turned to the victim's channels and size) "
                        f"{default_text('ood_pool')}")
    p.add_argument("--jacobian_cap", type=POS_INT, default=None,
                   help="jacobian: most points augmented per generation, a seeded random subset (default: all)")
    p.add_argument("--sampling", default=None, choices=SAMPLINGS,
                   help="knockoff: random order, or adaptive (a gradient bandit over the pool's groups) "
                        f"{default_text('sampling')}")
    for key, (mode, f) in MODE_OPTIONS.items():  # ranges are checked by the Options dataclass
        kind = (f.type if isinstance(f.type, str) else f.type.__name__).split("|")[0].strip()  # "int | None": int
        cast = {"int": int, "float": float}[kind]
        p.add_argument(f"--{key}", type=number(cast), default=None,
                       help=f"{mode}: {f.metadata['help']} (default: {f.default})")


def add_split_price(p: argparse.ArgumentParser) -> None:
    d = QueryPriceConfig()
    p.add_argument("--query_quantile", type=number(float, 0, 1, hi_open=True), default=None,
                   help=f"the legitimate per-query cost above which a query's own weight grows (default: "
                        f"{d.query_quantile})")
    p.add_argument("--query_share", type=number(float, 0, 1, hi_open=True), default=None,
                   help=f"share of a legitimate user's PoW carried by its costliest queries (default: {d.query_share})")
    p.add_argument("--query_smoothing", type=number(float, 0, 100), default=None,
                   help=f"kernel width, in Silverman bandwidths, that widens the legitimate tail before the "
                        f"weights are fitted (default: {d.query_smoothing})")
    p.add_argument("--account_factor", type=number(float, 1, 1e6), default=None,
                   help=f"most the account's cumulative excess multiplies a batch's price; no split over keys "
                        f"pays less than 1/this of one key's price (default: {d.account_factor})")
    p.add_argument("--anonymous", action="store_true", default=None,
                   help="no API keys: each address range (IPv4 /24, IPv6 /48) pays by its queries' own costs "
                        "alone and is rate-limited as one client (default: off)")


def add_server_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", default=None,
                   help="accounts, keys and spent challenges: sqlite:///PATH.db or postgresql://USER@HOST:PORT/DB "
                        "(default: sqlite:///server-state.db)")
    p.add_argument("--key_file", default=None,
                   help="the HMAC key file from serve-admin init (mode 0600) (default: $POW_SECRET)")


def _train_victim_flags(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_victim(p)
    add_training(p)
    p.add_argument("--epochs", type=POS_INT, default=None,
                   help=preset_text("victim_epochs") + "; with --lr_schedule plateau, the most")
    p.add_argument("--lr_schedule", default=None, choices=LR_SCHEDULES,
                   help="cosine: anneal over --epochs; plateau: cut the rate tenfold when the loss stalls for "
                        "--plateau_patience epochs, and stop after the second cut (default: " + ", ".join(
                            f"{n}: {p.get('lr_schedule', DEFAULTS['lr_schedule'])}" for n, p in PRESETS.items()) + ")")
    p.add_argument("--plateau_patience", type=NONNEG_INT, default=None,
                   help=f"epochs without a lower loss before a cut {default_text('plateau_patience')}")
    p.add_argument("--victim_shift", type=NONNEG_INT, default=None,
                   help="augmentation: random shifts of up to this many pixels; " + preset_text("victim_shift"))
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing victim checkpoint at --victim_path (default: refuse)")


def _extract_flags(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_victim(p)
    p.add_argument("--mode", default=None, help=f"attack: one of {', '.join(ATTACKS)} {default_text('mode')}")
    add_extraction(p)
    add_training(p)
    add_accountant(p)
    add_pate(p)
    add_calibration(p)
    add_pow(p)
    p.add_argument("--calibration", default=None,
                   help="legitimate baseline (a standard run's log.csv or a paper time,privacy,queries CSV); "
                        "when given, pow_time_s is filled as the run goes (default: none)")
    p.add_argument("--out_dir", default=None, help="where log.csv and params.json go (default: results/DATASET-MODE)")
    p.add_argument("--fresh", action="store_true", default=None,
                   help="start over even if out_dir holds a run to resume (default: resume)")

    p.add_argument("--reps_cache", default=None,
                   help="folder caching the victim's embedding of its training set, shared by runs (default: none)")
    p.add_argument("--server", default=None,
                   help="attack a live server (python main.py serve) at this URL instead of the local victim; "
                        "PoW is then solved for real and timed (default: none)")
    p.add_argument("--api_key", default=None, help="the API key for --server (default: $POW_API_KEY)")


def _frontier_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", default=None, type=DATASET_NAMES,
                   help="comma-separated (default: mnist-5k,fashion-mnist)")
    p.add_argument("--data_dir", default=None, help=f"{default_text('data_dir')}")
    p.add_argument("--seed", type=NONNEG_INT, default=None,
                   help=f"the streams' seed; the baseline is recorded with seed + 1 {default_text('seed')}")
    p.add_argument("--device", default=None, help=f"{default_text('device')}")
    p.add_argument("--victim_dir", default=None,
                   help="folder of DATASET-victim.pt checkpoints, trained there when missing (default: checkpoints)")
    add_accountant(p)
    add_calibration(p)
    add_split_price(p)
    p.add_argument("--attackers", default=None, type=listed(one_of(ATTACKS, "mode"), "mode"),
                   help=f"comma-separated attack modes (default: {FRONTIER_DEFAULTS['attackers']})")
    p.add_argument("--profiles", default=None, type=listed(one_of(PROFILES, "profile"), "profile"),
                   help=f"comma-separated legitimate profiles; standard always runs "
                        f"(default: all: {','.join(PROFILES)})")
    p.add_argument("--deficit_tolerances", default=None, type=listed(_tolerance, "rule"),
                   help="comma-separated rules: off (one-sided) or T, two-sided with deficits beyond T standard "
                        f"deviations priced (default: {FRONTIER_DEFAULTS['deficit_tolerances']})")
    p.add_argument("--budget", type=POS_INT, default=None,
                   help=f"queries of each stream; pool-ranking attacks send at most their pool "
                        f"(default: {FRONTIER_DEFAULTS['budget']})")
    p.add_argument("--accounts", default=None, type=listed(number(int, 1, 4096), "count"),
                   help=f"comma-separated numbers of API keys (default: {FRONTIER_DEFAULTS['accounts']})")
    p.add_argument("--batches", default=None, type=listed(number(int, 1, 256), "batch size"),
                   help=f"comma-separated batch sizes (default: {FRONTIER_DEFAULTS['batches']})")
    p.add_argument("--ood_pool", default=None, type=pool_arg, help=f"the attackers' images {default_text('ood_pool')}")
    p.add_argument("--sampling", default=None, choices=SAMPLINGS,
                   help=f"knockoff: random or adaptive {default_text('sampling')}")
    p.add_argument("--stolen_epochs", type=NONNEG_INT, default=None,
                   help="the attacks' copies' epochs per round as they query (default: 1)")
    p.add_argument("--out_dir", default=None,
                   help="where frontier.csv, .png, .md, the baselines and the streams go (default: results/frontier)")


def _cost_growth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", default=None, type=DATASET_NAMES,
                   help="comma-separated kNN training sets (each dataset's victim split) (default: mnist-5k)")
    p.add_argument("--victims", default=None,
                   help="comma-separated victim checkpoints, each PATH or LABEL=PATH; every one must take the "
                        "datasets' input shape (default: VICTIM_DIR/DATASET-victim.pt per dataset)")
    p.add_argument("--ood_pools", default=None, type=listed(pool_arg, "pool"),
                   help="comma-separated out-of-distribution pools: names or image folders (default: photos)")
    p.add_argument("--data_dir", default=None, help=f"{default_text('data_dir')}")
    p.add_argument("--victim_dir", default=None, help="(default: checkpoints)")
    p.add_argument("--seed", type=NONNEG_INT, default=None, help=f"{default_text('seed')}")
    p.add_argument("--device", default=None, help=f"{default_text('device')}")
    p.add_argument("--queries", type=POS_INT, default=None,
                   help=f"queries of each kind (default: {GrowthConfig.queries})")
    p.add_argument("--sigmas", default=None, type=listed(number(float, MIN_SIGMA, 1e6), "sigma"),
                   help="comma-separated GNMax sigmas, a factor too (default: "
                        f"{','.join(f'{v:g}' for v in GrowthConfig.sigmas)})")
    p.add_argument("--k", type=POS_INT, default=None, help=preset_text("k") + "; private-kNN neighbours")
    p.add_argument("--delta", type=number(float, 0, 1, lo_open=True, hi_open=True), default=None,
                   help=preset_text("delta"))
    p.add_argument("--out", default=None, help="CSV (default: results/cost_growth.csv; notes in .md beside it)")


#: the commands whose command lines other commands write and run (grid cells, frontier replays): their
#: flags live here, below every command, so that a command can parse another's line without importing it
RECIPES = {  # command: (its flags, its --help line)
    "train-victim": (_train_victim_flags, "train a victim, evaluate it, save the checkpoint and P.json"),
    "extract": (_extract_flags, "run one extraction attack against a victim and log every round"),
    "frontier": (_frontier_flags, "the defence frontier: each attacker's stolen accuracy against its price under "
                                  "every split, and every legitimate profile's price, per rule"),
    "cost-growth": (_cost_growth_flags, "which victim, kNN set and pool make an OOD attacker's kNN cost grow faster, "
                                        "beside the paper's claim"),
}


def add_recipe(sub, command: str) -> argparse.ArgumentParser:
    """Add recipe `command` and its flags to subparsers `sub` (the command's own add_arguments calls this)."""
    flags, text = RECIPES[command]
    p = sub.add_parser(command, help=text)
    flags(p)
    return p


class _MainParser(argparse.ArgumentParser):
    """main.py's parser: a flag that no parser knows is reported with its command's usage (argparse itself
    reports it with the top level's, which names no flag of the command)."""

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self._commands.choices.get(getattr(parsed, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def build_parser(adders) -> argparse.ArgumentParser:
    """The parser of main.py: each of `adders` adds its command and flags to the subparsers, in --help's order."""
    parser = _MainParser(
        prog="main.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Model extraction against a victim defended by calibrated proof-of-work.",
        epilog="Run 'python main.py COMMAND --help' for every flag of a command and its default.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser._commands = sub
    for add in adders:
        add(sub)
    return parser


def resolve(args: argparse.Namespace) -> Settings:
    """Fill unset flags from the dataset preset, then the global defaults; derive default paths."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    dataset = given.get("dataset", DEFAULTS["dataset"])
    preset = PRESETS.get(dataset, PRESETS[DEFAULT_DATASET])
    values = {**DEFAULTS, **preset, **given, "dataset": dataset}
    command = values.get("command")
    if "epochs" not in given:
        values["epochs"] = preset["victim_epochs"]
    if command in ("extract", "demo") and "victim_output" not in given and values.get("mode") in SOFT_TARGET_MODES:
        values["victim_output"] = "probs"
    if values.get("victim_path") is None:
        values["victim_path"] = str(Path("checkpoints") / f"{dataset}-victim.pt")
    if values.get("teachers_path") is None:
        values["teachers_path"] = str(Path("checkpoints") / f"{dataset}-teachers.pt")
    if command == "reproduce":
        for key in ("budget", "datasets", "victim_epochs"):  # each cell's own default; the datasets found offline
            if key not in given:
                values[key] = None
    if command == "frontier":
        values.update({k: v for k, v in FRONTIER_DEFAULTS.items() if k not in given})
        values["given_flags"] = sorted(given)
    if command == "cost-growth":
        values.update({k: v for k, v in (("datasets", "mnist-5k"), ("ood_pools", "photos"),
                                         ("queries", GrowthConfig.queries),
                                         ("sigmas", ",".join(f"{v:g}" for v in GrowthConfig.sigmas)))
                       if k not in given})
    if command in CALIBRATION_MODE_OF and "calibration_mode" not in given:
        values["calibration_mode"] = CALIBRATION_MODE_OF[command]
    if values.get("base") is None:
        values["base"] = CalibrationConfig.default_base(values["calibration_mode"])
    if values.get("out_dir") is None and command != "reproduce":  # a grid's folder is always named
        values["out_dir"] = "results/demo" if command == "demo" else f"results/{dataset}-{values['mode']}"
    return Settings(values)


def parse(argv) -> Settings:
    """The settings of a recipe's command line (["extract", ...]: RECIPES); main.parse parses every command's."""
    if not argv or argv[0] not in RECIPES:
        raise ConfigError(f"parameters.parse reads the command lines of {', '.join(RECIPES)}, not {argv[:1]}; "
                          f"parse any command's with main.parse")
    return resolve(build_parser([lambda sub: add_recipe(sub, argv[0])]).parse_args(argv))
