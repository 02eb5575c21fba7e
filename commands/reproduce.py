"""reproduce: the paper's grid (datasets x attack modes x seeds) in one command, resumable, then a report.

Each cell is an independent `extract` run in DIR/runs/DATASET/MODE-bBUDGET-sSEED. Per dataset the victim
is trained once (where --victim_dir has none), and each seed's legitimate baseline (`standard`) runs
before the attacks priced against it. Runs share one cache of the victim's embedding (DIR/.cache).

  * resume: a finished run (its DONE.json names its log and state by hash) is skipped; an interrupted
    one resumes from its last committed round; a run folder that cannot resume (damaged state, a log
    without its state) is moved aside to NAME.broken-N and redone from scratch, never read;
  * --jobs N runs N cells at a time as processes (victims, then baselines, then attacks);
  * --list prints the grid as shell commands in dependency order; --slurm writes job arrays for sbatch
    (victims, baselines, attacks, cost growth, the frontier, each array depending on the one before);
  * after the attacks, where the grid holds mnist-5k or MNIST: what makes an attacker's kNN cost grow
    faster (`main.py cost-growth`: every victim x kNN set x pool), into DIR/cost_growth.{csv,md};
  * --ood_pool (photo crops, a dataset, or a folder of images such as CIFAR-10's) is every cell's pool;
    DFME runs --dfme_budget queries (default 100,000; the paper's 2M is a GPU or SLURM recipe);
  * last, the defence frontier (`main.py frontier`) over the grid's mnist-5k and Fashion-MNIST, into
    DIR/frontier (a --quick grid runs a small one); the report includes it;
  * --report_only DIR rebuilds DIR/report.md and its figures from the finished runs.
"""
from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path

import attacks
import parameters
from attacks import ATTACKS
from commands.grid import GRID, SCALE_KEYS, _capacity, cells, read_grid, run_grid, slurm_scripts
from commands.report import write_report
from common.errors import UserError
from common.io import FolderLock, atomic_write_text, ensure_writable_dir
from common.runtime import resolve_device
from data.ood import OOD_POOLS, check_not_own
from data.registry import load_splits
from extraction.loop import validate
from models.architectures import ARCHITECTURES
from parameters import DATASET_NAMES, DEFAULTS, POS_INT, default_text, listed, number, one_of, pool_arg

#: the paper's query budgets (its CSVs: 10 steps of 1,000 queries; DFME from 2M), and mnist-5k's pool limit
FULL_BUDGETS = {"mnist-5k": 1024, "fashion-mnist": 10_000, "mnist": 10_000, "svhn": 10_000, "cifar10": 10_000}
#: DFME's default budget, what 2 CPU cores finish in about 12 minutes; the paper's 2M (PAPER_DFME) is a GPU
#: or SLURM run: `--dfme_budget 2000000 --device cuda`, or `--slurm`
FULL_DFME = 100_000
PAPER_DFME = 2_000_000
QUICK_BUDGET, QUICK_DFME = 512, 2240  # --quick: every mode at a small budget on mnist-5k
def available_datasets(data_dir: str) -> list:
    """mnist-5k always; Fashion-MNIST, MNIST, SVHN and CIFAR10 where their files can be loaded offline."""
    found = ["mnist-5k"]
    for name in ("fashion-mnist", "mnist", "svhn", "cifar10"):
        try:
            load_splits(name, data_dir)
        except UserError:
            continue
        found.append(name)
    return found


@functools.lru_cache(maxsize=None)  # planning and checking the grid both ask; a dataset loads once
def pool_size(dataset: str, data_dir: str) -> int | None:
    """The attacker's in-distribution pool of `dataset` (None where its files are not here: the grid's
    check before training says so)."""
    try:
        return len(load_splits(dataset, data_dir).pool_x)
    except UserError:
        return None


def grid_settings(s) -> dict:
    """The grid's own settings (written to DIR/grid.json); a --report_only run reads them back."""
    quick = bool(s.quick)
    datasets = list(dict.fromkeys(d for d in str(s.datasets).split(",") if d)) if s.datasets else (
        ["mnist-5k"] if quick else available_datasets(s.data_dir))
    modes = list(dict.fromkeys(m for m in str(s.modes).split(",") if m)) if s.modes else [
        "standard", *[m for m in attacks.ATTACKS if m != "standard"]]
    unknown = [m for m in modes if m not in attacks.ATTACKS]
    if unknown:
        raise UserError(f"unknown mode(s) {', '.join(unknown)}; valid: {', '.join(sorted(attacks.ATTACKS))}")
    if "standard" not in modes:
        modes = ["standard", *modes]  # every attack is priced against it
    budgets = {}
    held = _capacity(_pool(s.ood_pool), str(s.data_dir))  # None: photo crops, as many as asked
    for d in datasets:
        pool = pool_size(d, str(Path(s.data_dir).resolve()))
        for m in modes:
            if s.budget is not None:
                budgets[f"{d}/{m}"] = int(s.budget)  # as asked: _validate refuses one that does not fit
                continue
            if m == "dfme":
                planned = QUICK_DFME if quick else int(s.dfme_budget or FULL_DFME)
            else:
                planned = QUICK_BUDGET if quick else FULL_BUDGETS[d]
            cap = attacks.ATTACKS[m].max_budget(pool) if pool is not None else None
            if attacks.ATTACKS[m].uses_ood_pool and held is not None:
                cap = held if cap is None else min(cap, held)  # a folder of images holds so many
            budgets[f"{d}/{m}"] = planned if cap is None else min(planned, cap)  # what the pool allows
    return {"datasets": datasets, "modes": modes, "seeds": int(s.seeds), "budgets": budgets,
            "profile": "quick" if quick else "full", "data_dir": str(Path(s.data_dir).resolve()),
            "victim_dir": str(Path(s.victim_dir).resolve()), "device": s.device, "ood_pool": _pool(s.ood_pool),
            "query_batch": int(s.query_batch), **{k: s.as_dict().get(k) for k in SCALE_KEYS}}


def _pool(name: str) -> str:
    """A named pool as it is; a folder as its absolute path (cells run from the project's root)."""
    return name if name in OOD_POOLS else str(Path(name).resolve())


def reproduce(s, *, progress: bool = True) -> tuple:
    if s.report_only:
        out = Path(s.report_only).resolve()
        grid = read_grid(out)
        if grid is None:
            raise UserError(f"{out} holds no grid ({GRID} is missing); give the --out_dir of a reproduce run")
        with FolderLock(out, "reproduce grid"):
            report = write_report(grid, out)
        return report, f"report: {report}"
    if not s.out_dir:
        raise UserError("reproduce needs --out_dir DIR (where the grid's runs and report go)")
    out = Path(s.out_dir).resolve()
    grid = grid_settings(s)
    old = read_grid(out)
    if old is not None and s.dfme_budget is None and s.budget is None:  # a grid planned with another DFME default
        grid["budgets"].update({k: v for k,
                                v in old["budgets"].items() if k.endswith("/dfme") and k in grid["budgets"]})
    if old is not None and old != grid and _started(out):
        changed = sorted(k for k in set(old) | set(grid) if old.get(k) != grid.get(k))
        raise UserError(f"{out} holds a grid with other settings ({', '.join(changed)}); use another --out_dir, "
                        f"or the same flags to resume it")
    _validate(grid, out)
    if s.list:
        return None, "\n".join(c.command() for c in cells(grid, out))
    ensure_writable_dir(out, "--out_dir")
    with FolderLock(out, "reproduce grid"):  # one grid process per folder
        atomic_write_text(out / GRID, json.dumps(grid, indent=2) + "\n")
        if s.slurm:
            submit = slurm_scripts(grid, out)
            return submit, f"SLURM job arrays written; submit them with: bash {shlex.quote(str(submit))}"
        said = run_grid(grid, out, jobs=int(s.jobs), progress=progress)
        report = write_report(grid, out)
    return report, "\n".join([*said, f"report: {report}"])


def _started(out: Path) -> bool:
    """Whether a grid in `out` has begun a run (its settings bind a rerun only then: a grid refused before
    its first run is planned again from the flags given)."""
    runs = out / "runs"
    return runs.is_dir() and any(runs.iterdir())


def _validate_pool(grid: dict) -> None:
    """The grid's --ood_pool: not a dataset's own images, and a folder that holds images (before any cell)."""
    pool = grid["ood_pool"]
    users = [m for m in grid["modes"] if attacks.ATTACKS[m].uses_ood_pool]
    if pool in OOD_POOLS:
        if users:
            for d in grid["datasets"]:
                check_not_own(pool, d)
        return
    if _capacity(pool, grid["data_dir"]) == 0:
        raise UserError(f"--ood_pool {pool} holds no images; give a folder of images (searched recursively), or "
                        f"leave it out for photo crops")


def _validate(grid: dict, out: Path) -> None:
    """Every run cell's settings, checked as extract checks them, before anything is written."""
    resolve_device(grid["device"])  # every cell would fail on a device this machine lacks
    victims = Path(grid["victim_dir"])
    if victims.exists() and not victims.is_dir():
        raise UserError(f"--victim_dir {victims} is a file, not a folder; give the folder of the victims' checkpoints")
    if not victims.exists():  # one that exists may be read-only: it may hold every victim already
        ensure_writable_dir(victims, "--victim_dir")
    pools = {d: pool_size(d, grid["data_dir"]) for d in grid["datasets"]}
    for dataset in (d for d, size in pools.items() if size is None):
        load_splits(dataset, grid["data_dir"])  # not here: its error names --data_dir and the files it needs
    too_big = []
    for key, budget in grid["budgets"].items():
        dataset, mode = key.split("/")
        cap = attacks.ATTACKS[mode].max_budget(pools[dataset]) if pools.get(dataset) is not None else None
        if cap is not None and budget > cap:
            too_big.append(f"{key} ({budget} queries; its pool allows {cap})")
    if too_big:
        raise UserError(f"{len(too_big)} cell(s) would ask for more distinct queries than the attacker's pool holds: "
                        f"{'; '.join(too_big[:4])}; lower --budget (or leave it out: the grid plans budgets that fit)")
    _validate_pool(grid)
    for cell in cells(grid, out):
        argv = dict(zip(cell.argv[1::2], cell.argv[2::2]))
        if cell.kind in ("baseline", "attack") and int(argv["--budget"]) < int(argv["--query_batch"]):
            fix = ("raise --dfme_budget" if argv["--mode"] == "dfme"
                   else "lower --query_batch (or raise --budget, where the pool allows)")
            raise UserError(f"{cell.name}: the grid plans {argv['--budget']} queries, below one batch of "
                            f"{argv['--query_batch']}; {fix}")
        if cell.kind in ("frontier", "growth"):
            parameters.parse(cell.argv)  # its flags parse; it checks its own inputs as it starts
        elif cell.kind != "victim":
            validate(parameters.parse(cell.argv).replace(calibration=None))  # the baseline is made later


def add_arguments(sub) -> None:
    p = sub.add_parser("reproduce", help="the paper's grid (datasets x modes x seeds), resumable, then DIR/report.md")
    p.add_argument("--out_dir", default=None, help="where the runs, the report and its figures go")
    p.add_argument("--quick", action="store_true", default=None,
                   help="every mode at a small budget on mnist-5k (under 15 minutes on 2 cores)")
    p.add_argument("--datasets", default=None, type=DATASET_NAMES,
                   help="comma-separated (default: mnist-5k, plus every other dataset loadable offline)")
    p.add_argument("--modes", default=None, type=listed(one_of(ATTACKS, "mode"), "mode"),
                   help="comma-separated attack modes (default: all; standard always runs)")
    p.add_argument("--seeds", type=number(int, 1, 100), default=None, help="seeds per cell, 0..N-1 (default: 1)")
    p.add_argument("--budget", type=POS_INT, default=None,
                   help="queries of every run (default: the paper's: 1,024 on mnist-5k, 10,000 elsewhere, DFME 100,000 "
                        "or 2M; --quick: 512, DFME 2,240)")
    p.add_argument("--ood_pool", default=None, type=pool_arg,
                   help="copycat's, knockoff's and the other pool attacks' images: photos, a dataset, or a folder "
                        "such as CIFAR-10's JPEGs (turned grey and resized for an MNIST victim) "
                        f"{default_text('ood_pool')}")
    p.add_argument("--victim_arch", default=None, choices=sorted(ARCHITECTURES),
                   help="the victims' architecture (default: mnistnet for 28x28, resnet34_8x for 32x32x3; "
                        "mnistnet is CIFAR-10's CPU scale)")
    p.add_argument("--stolen_arch", default=None, choices=sorted(ARCHITECTURES),
                   help="the copies' architecture (default: mnistnet for 28x28, resnet18 for 32x32x3)")
    p.add_argument("--victim_epochs", type=POS_INT, default=None, help="the victims' epochs (default: the preset's)")
    p.add_argument("--query_batch", type=POS_INT, default=None,
                   help=f"queries per batch of every mode but DFME (default: {DEFAULTS['query_batch']}, the paper's)")
    p.add_argument("--dfme_budget", type=POS_INT, default=None,
                   help="DFME's queries in a full grid (default: 100,000, about 12 minutes on 2 cores; the paper's "
                        "2,000,000 wants --device cuda or --slurm)")
    p.add_argument("--jobs", type=number(int, 1, 256), default=None, help="runs at a time, as processes (default: 1)")
    p.add_argument("--list", action="store_true", default=None, help="print the grid's commands, in order, and stop")
    p.add_argument("--slurm", action="store_true", default=None,
                   help="write SLURM job arrays (DIR/slurm/submit.sh) instead of running")
    p.add_argument("--report_only", default=None, metavar="DIR", help="rebuild DIR/report.md from finished runs")
    p.add_argument("--data_dir", default=None, help=f"{default_text('data_dir')}")
    p.add_argument("--victim_dir", default=None,
                   help="where DATASET-victim.pt are, or are trained to (default: checkpoints)")
    p.add_argument("--device", default=None, help=f"{default_text('device')}")
