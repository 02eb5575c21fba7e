"""The reproduce grid's cells, and running them: a service of the reproduce command and its report (not a
command itself; it imports none).

A cell is one `main.py` command line (a victim, a baseline or attack run, the cost-growth stage, the
frontier) with the folder it writes. run_grid runs the cells not yet done, stage by stage (STAGES): in
this process with --jobs 1 (the frontier as a child process, since it is a command of its own), or as
--jobs worker processes; slurm_scripts writes them as SLURM job arrays instead.
"""
from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

import parameters
from common.errors import UserError
from common.io import atomic_write_text
from common.process import child_env
from data.ood import ood_capacity
from extraction import cost_growth
from extraction.loop import run_extraction
from extraction.state import broken, finished
from models.victim_training import VictimRecipe, train_victim

ROOT = Path(__file__).resolve().parent.parent
GRID = "grid.json"  # the grid's settings, written first: --report_only and --slurm read it
FRONTIER_DATASETS = ("mnist-5k", "fashion-mnist")  # the frontier's (`main.py frontier`) datasets in a grid
FRONTIER_BUDGET = 2048  # the frontier's streams, at most (and no more than the grid's attack budgets)
FRONTIER_FLAGS = {"full": [], "quick": ["--accounts", "1,8", "--batches", "64", "--deficit_tolerances", "off,3",
                                        "--profiles", "oneclass,hard"]}
#: per-mode extract flags: DFME's own batch and round sizes (its iteration is 7 batches)
MODE_FLAGS = {"full": {"dfme": ["--query_batch", "256", "--batches_per_round", "70"]},
              "quick": {"dfme": ["--query_batch", "32", "--batches_per_round", "70"],
                        "mixmatch": ["--stolen_epochs", "2"]}}


GRID_KEYS = {"datasets": list, "modes": list, "seeds": int, "budgets": dict, "profile": str, "data_dir": str,
             "victim_dir": str, "device": str, "ood_pool": str, "query_batch": int}
#: a grid's scale, where it is not the preset's: the victim's and the copy's architectures and the victim's
#: epochs (CPU scale: --victim_arch mnistnet --stolen_arch mnistnet --victim_epochs 30 on CIFAR-10)
SCALE_KEYS = {"victim_arch": ("train-victim", "extract"), "stolen_arch": ("extract",),
              "victim_epochs": ("train-victim",)}
STAGES = ("victim", "baseline", "attack", "growth", "frontier")  # run in this order, each after the one before
GROWTH_DATASETS = ("mnist-5k", "mnist")  # the cost-growth stage (`main.py cost-growth`): MNIST's digits
GROWTH_QUICK = 256  # --quick: the cost-growth stage's queries of each kind


def read_grid(out: Path) -> dict | None:
    """DIR/grid.json, checked; None when there is none."""
    path = out / GRID
    if not path.exists():
        return None
    try:
        grid = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a grid record ({exc}); remove it, or use another --out_dir") from exc
    if isinstance(grid, dict):
        grid.setdefault("ood_pool", "photos")  # grids recorded before these were grid settings
        grid.setdefault("query_batch", 64)
        for key in SCALE_KEYS:
            grid.setdefault(key, None)
    if not isinstance(grid, dict) or any(not isinstance(grid.get(k), kind) for k, kind in GRID_KEYS.items()) \
            or grid["profile"] not in MODE_FLAGS or any(not isinstance(grid[k], (str, int, type(None)))
                                                        for k in SCALE_KEYS):
        raise UserError(f"{path} is not a complete grid record (it needs {', '.join(GRID_KEYS)}); remove it, or "
                        f"use another --out_dir")
    return grid



@dataclass
class Cell:
    kind: str  # victim | baseline | attack
    dataset: str
    name: str  # victim: the checkpoint path; runs: DATASET/MODE-bBUDGET-sSEED
    argv: list = field(default_factory=list)  # main.py arguments
    folder: Path | None = None  # runs only

    def command(self) -> str:
        """The cell as one shell command; a victim's trains only where no checkpoint exists yet, and the
        cost-growth stage runs (afresh) only where one of its files is missing."""
        line = " ".join(shlex.quote(a) for a in ["python3", "main.py", *self.argv])
        if self.kind == "victim":
            return f"test -f {shlex.quote(self.name)} || {line}"
        if self.kind == "growth":
            files = [shlex.quote(str(p)) for p in _growth_outputs(self)]
            return " && ".join(f"test -f {f}" for f in files) + f" || {{ rm -f {' '.join(files)}; {line}; }}"
        return line


@functools.lru_cache(maxsize=None)  # planning, listing and checking the grid all ask; a folder is walked once
def _capacity(pool: str, data_dir: str) -> int | None:
    return ood_capacity(pool, data_dir)


def cells(grid: dict, out: Path) -> list:
    """Every cell of the grid in dependency order (STAGES): victims, baselines, attacks, cost growth, frontier."""
    victims, baselines, runs = [], [], []
    flags = MODE_FLAGS[grid["profile"]]
    common = ["--data_dir", grid["data_dir"], "--device", grid["device"]]
    pool = ["--ood_pool", grid["ood_pool"], "--query_batch", str(grid["query_batch"])]  # a mode's own flags follow
    for d in grid["datasets"]:
        victim = str(Path(grid["victim_dir"]) / f"{d}-victim.pt")
        victims.append(Cell("victim", d, victim, ["train-victim", "--dataset", d, "--victim_path", victim, *common,
                                                  *_scale(grid, "train-victim")]))
        for seed in range(grid["seeds"]):
            base = None
            for mode in grid["modes"]:
                budget = grid["budgets"][f"{d}/{mode}"]
                name = f"{d}/{mode}-b{budget}-s{seed}"
                folder = out / "runs" / name
                argv = ["extract", "--dataset", d, "--mode", mode, "--budget", str(budget), "--seed", str(seed),
                        "--victim_path", victim, "--out_dir", str(folder), "--reps_cache", str(out / ".cache"),
                        *common, *pool, *_scale(grid, "extract"), *flags.get(mode, [])]
                if mode == "standard":
                    base = folder
                    baselines.append(Cell("baseline", d, name, argv, folder))
                else:
                    argv += ["--calibration", str(base / "log.csv")]
                    runs.append(Cell("attack", d, name, argv, folder))
    return victims + baselines + runs + growth_cells(grid, out) + frontier_cells(grid, out)


def _scale(grid: dict, command: str) -> list:
    """The grid's scale flags that `command` takes (none where the preset's are kept)."""
    flag = {"victim_epochs": "--epochs"}
    return [a for k, used in SCALE_KEYS.items() if command in used and grid.get(k) is not None
            for a in (flag.get(k, f"--{k}"), str(grid[k]))]


def growth_cells(grid: dict, out: Path) -> list:
    """What makes an attacker's kNN cost grow faster (`main.py cost-growth`), over the grid's MNIST-digit
    datasets: every victim with every kNN set, photo crops and the grid's pool. It needs only the victims."""
    datasets = [d for d in grid["datasets"] if d in GROWTH_DATASETS]
    if not datasets:
        return []
    victims = ",".join(f"{d}={Path(grid['victim_dir']) / f'{d}-victim.pt'}" for d in datasets)
    queries = GROWTH_QUICK if grid["profile"] == "quick" else cost_growth.GrowthConfig.queries
    held = _capacity(grid["ood_pool"], grid["data_dir"])  # a small folder: fewer queries, not a failure
    queries = queries if held is None else min(queries, held)
    argv = ["cost-growth", "--datasets", ",".join(datasets), "--victims", victims,
            "--ood_pools", ",".join(dict.fromkeys(["photos", grid["ood_pool"]])), "--data_dir", grid["data_dir"],
            "--device", grid["device"], "--out", str(out / "cost_growth.csv"), "--queries", str(queries)]
    return [Cell("growth", ",".join(datasets), "cost-growth", argv, out)]


def frontier_cells(grid: dict, out: Path) -> list:
    """The defence frontier over the grid's datasets that it covers (mnist-5k, Fashion-MNIST), last."""
    datasets = [d for d in grid["datasets"] if d in FRONTIER_DATASETS]
    attackers = [m for m in grid["modes"] if m != "standard"]
    if not datasets or not attackers:
        return []
    budgets = [b for key, b in grid["budgets"].items() if key.split("/")[0] in datasets and key.split("/")[1]
               not in ("standard", "dfme")] or [FRONTIER_BUDGET]
    argv = ["frontier", "--datasets", ",".join(datasets), "--attackers", ",".join(attackers),
            "--budget", str(min(FRONTIER_BUDGET, *budgets)), "--victim_dir", grid["victim_dir"],
            "--out_dir", str(out / "frontier"), "--data_dir", grid["data_dir"], "--device", grid["device"],
            "--ood_pool", grid["ood_pool"], *FRONTIER_FLAGS[grid["profile"]]]
    return [Cell("frontier", ",".join(datasets), "frontier", argv, out / "frontier")]


def _done(cell: Cell) -> bool:
    """A victim that exists; a run whose DONE.json is this cell's (dataset, mode, seed, budget)."""
    if cell.kind == "victim":
        return Path(cell.name).is_file()
    if cell.kind == "frontier":
        return (cell.folder / "frontier.csv").is_file() and (cell.folder / "frontier.params.json").is_file()
    if cell.kind == "growth":
        return all((out_file).is_file() for out_file in _growth_outputs(cell))
    mark = finished(cell.folder)
    argv = dict(zip(cell.argv[1::2], cell.argv[2::2]))
    return mark is not None and (mark.get("dataset"), mark.get("mode"), str(mark.get("seed")),
                                 str(mark.get("budget"))) \
        == (argv.get("--dataset"), argv.get("--mode"), argv.get("--seed"), argv.get("--budget"))


def _growth_outputs(cell: Cell) -> list:
    return list(cost_growth.output_files(cell.argv[cell.argv.index("--out") + 1]).values())  # the notes are last


def _move_aside(folder: Path) -> Path:
    n = 1
    while folder.with_name(f"{folder.name}.broken-{n}").exists():
        n += 1
    target = folder.with_name(f"{folder.name}.broken-{n}")
    folder.rename(target)
    return target


def _set_aside_if_broken(cell: Cell) -> None:
    """A run folder that cannot resume is moved aside (NAME.broken-N) before its cell runs: redone, never read.
    A run that fails for any other reason (a lock, Ctrl-C, bad settings) leaves its folder as it is."""
    if cell.kind == "growth":  # a half-written stage (some of its files) is redone whole
        for stale in _growth_outputs(cell):
            stale.unlink(missing_ok=True)
        return
    if cell.kind in ("victim", "frontier"):  # a frontier resumes its streams and baselines itself
        return
    why = broken(cell.folder)
    if why:
        moved = _move_aside(cell.folder)
        print(f"  {cell.name}: its folder cannot resume ({why.split(';')[0]}); moved aside to {moved.name}, "
              f"redoing it", file=sys.stderr)


def _run_in_process(cell: Cell) -> None:
    if cell.kind == "frontier":  # a command of its own: run as one, not imported
        _run_child(cell)
        return
    settings = parameters.parse(cell.argv)
    if cell.kind == "victim":
        train_victim(VictimRecipe.of(settings.as_dict()), progress=False)
        return
    if cell.kind == "growth":
        _set_aside_if_broken(cell)
        cost_growth.run(cost_growth.GrowthJob.of(settings.as_dict()), record=settings.as_dict(), progress=False)
        return
    _set_aside_if_broken(cell)
    run_extraction(settings, progress=False)


def _run_child(cell: Cell) -> None:
    """Run a cell as `python3 main.py ...` in a child process; a UserError with its last line if it fails."""
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *cell.argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=child_env())
    if proc.returncode != 0:
        raise _failed(cell, proc.returncode, proc.stderr)


def _failed(cell: Cell, returncode: int, stderr: str) -> UserError:
    """A failed child's cell: its last line on stderr, and how to rerun it alone."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return UserError(f"grid cell {cell.name} failed: {lines[-1] if lines else f'exit {returncode}'}; "
                     f"rerun alone with: {cell.command()}")


class _Children:
    """The worker processes of --jobs: every one is stopped when the grid stops, normally or not."""

    def __init__(self):
        self.lock, self.procs, self.stopping = threading.Lock(), [], False

    def run(self, cell: Cell, threads: int) -> None:
        _set_aside_if_broken(cell)
        env = child_env({**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        with self.lock:
            if self.stopping:
                return
            proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *cell.argv], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.procs.append(proc)
        _, err = proc.communicate()
        if proc.returncode != 0 and not self.stopping:
            raise _failed(cell, proc.returncode, err)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: a run keeps its committed rounds and resumes next time
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _line(cell: Cell) -> str:
    if cell.kind == "victim":
        return f"  victim {cell.name}: ready"
    if cell.kind == "frontier":
        return f"  frontier ({cell.dataset}): {cell.folder / 'frontier.md'}"
    if cell.kind == "growth":
        return f"  cost growth ({cell.dataset}): {_growth_outputs(cell)[-1]}"
    final = {k: float("nan") if v is None else v for k, v in (finished(cell.folder) or {}).get("final", {}).items()}
    return (f"  {cell.name}: {final.get('queries')} queries, accuracy {final.get('accuracy', float('nan')):.1f}%, "
            f"fidelity {final.get('fidelity', float('nan')):.1f}%")  # null in DONE.json: a column not filled


def run_grid(grid: dict, out: Path, *, jobs: int, progress: bool = True) -> list:
    """Run every cell not yet done, stage by stage; returns the lines said about each."""
    todo = cells(grid, out)
    said = []
    bar = tqdm(total=len(todo), unit="run", desc="reproduce", disable=not progress)
    try:
        for kind in STAGES:
            stage = [c for c in todo if c.kind == kind]
            skipped = [c for c in stage if _done(c)]
            bar.update(len(skipped))
            pending = [c for c in stage if c not in skipped]
            if jobs <= 1:
                for cell in pending:
                    _run_in_process(cell)
                    said.append(_line(cell))
                    bar.update(1)
                    bar.write(said[-1])
            else:
                threads = max(1, (os.cpu_count() or 1) // jobs)
                children = _Children()
                pool = ThreadPoolExecutor(jobs)
                try:
                    futures = {pool.submit(children.run, cell, threads): cell for cell in pending}
                    for future in futures:
                        future.result()
                        said.append(_line(futures[future]))
                        bar.update(1)
                        bar.write(said[-1])
                finally:  # a failed cell or Ctrl-C stops the others at once; they resume next time
                    children.stop()
                    pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return said


def slurm_scripts(grid: dict, out: Path) -> Path:
    """DIR/slurm/: one command list per stage, the array job, and submit.sh chaining the arrays."""
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    stages = {}
    for kind in STAGES:
        lines = [c.command() for c in cells(grid, out) if c.kind == kind]
        stages[kind] = len(lines)
        atomic_write_text(folder / f"{kind}s.txt", "".join(line + "\n" for line in lines))
    atomic_write_text(folder / "job.sh", f"""#!/bin/bash
#SBATCH --job-name=pow-grid
#SBATCH --cpus-per-task=1
# One grid cell per array task: line SLURM_ARRAY_TASK_ID of the list given as $1.
set -euo pipefail
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}
cd {shlex.quote(str(ROOT))}
line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$1")
echo "$line"
eval "$line"
""")
    atomic_write_text(folder / "report.sh", f"""#!/bin/bash
#SBATCH --job-name=pow-report
set -euo pipefail
cd {shlex.quote(str(ROOT))}
python3 main.py reproduce --report_only {shlex.quote(str(out))}
""")
    atomic_write_text(folder / "submit.sh", f"""#!/bin/bash
# Submit the grid to SLURM: victims, then baselines (afterok), then attacks (afterok), then the frontier
# (afterok), then the report.
set -euo pipefail
cd {shlex.quote(str(folder))}
mkdir -p log
dep=""  # the first stage waits for nothing
last=""
for stage in victims:{stages['victim']} baselines:{stages['baseline']} attacks:{stages['attack']} \\
    growths:{stages['growth']} frontiers:{stages['frontier']}; do
  name=${{stage%%:*}}; count=${{stage##*:}}
  [ "$count" -gt 0 ] || continue
  id=$(sbatch --parsable --kill-on-invalid-dep=yes ${{dep:+"$dep"}} --output="$PWD/log/%x-%A_%a.out" \\
    --array=0-$((count - 1)) job.sh "$PWD/$name.txt")
  echo "$name: job array $id ($count tasks)"
  last=$id
  dep=--dependency=afterok:$id
done
# the report runs whatever happened to the attacks, and lists the cells that did not finish
id=$(sbatch --parsable --dependency=afterany:$last --output="$PWD/log/%x-%j.out" report.sh)
echo "report: job $id; when it has run: "{shlex.quote(str(out / "report.md"))}
""")
    return folder / "submit.sh"


