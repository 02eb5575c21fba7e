"""demo: the paper's central experiment on mnist-5k, end to end, on a CPU, in a few minutes."""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.io import atomic_write_csv, ensure_writable_dir, write_params_json
from data.registry import create as create_spec
from extraction.loop import run_extraction
from extraction.summary import PRICED_LOG, plot, summarize_runs
from models.checkpoint import load_victim
from models.victim_training import VictimRecipe, train_victim
from parameters import add_accountant, add_calibration, add_common, add_extraction, add_victim
from pow.calibration import CalibrationConfig

DEMO_MODES = ("standard", "copycat")


def _usable_victim(s) -> bool:
    """True when --victim_path holds a victim for this dataset (and architecture); False when there is no
    file there yet, so one may be trained. Any other file at that path is the user's: a UserError says
    why it does not fit, and nothing is overwritten."""
    if not Path(s.victim_path).exists():
        return False
    load_victim(s.victim_path, create_spec(s.dataset), architecture=s.victim_arch)
    return True


def demo(s, *, progress: bool = True) -> tuple:
    out = ensure_writable_dir(Path(s.out_dir), "--out_dir")
    if Path(s.victim_path).resolve().is_relative_to(out.resolve()):
        raise UserError(f"--victim_path {s.victim_path} lies inside --out_dir {out}, every file of which the demo "
                        f"writes; keep the victim elsewhere (default: checkpoints/)")
    lines = []
    if _usable_victim(s):
        lines.append(f"reusing victim {s.victim_path}")
    else:
        _, report = train_victim(VictimRecipe.of(s.as_dict()), progress=progress)
        lines.append(report)
    logs = {}
    for mode in DEMO_MODES:
        run = s.replace(mode=mode, out_dir=str(out / mode), calibration=None)
        run_extraction(run, progress=progress)
    baseline = out / "standard" / "log.csv"
    table, logs, cal = summarize_runs({mode: out / mode for mode in DEMO_MODES}, baseline,
                                     config=CalibrationConfig.of(s.as_dict()), cost_measure=s.cost_measure)
    atomic_write_csv(out / "summary.csv", table)
    plot(logs, out / "accuracy_vs_time.png")
    write_params_json(out, {**s.as_dict(), "calibrator": cal.describe()}, "demo")
    lines.append(f"calibration: {s.calibration_mode}, cost measure {s.cost_measure}, baseline {baseline}")
    lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    lines.append(f"results: {out}/summary.csv, {out}/accuracy_vs_time.png, and per mode "
                 f"{out}/{{{','.join(DEMO_MODES)}}}/log.csv (the run) and {PRICED_LOG} (priced)")
    return table, "\n".join(lines)


def add_arguments(sub) -> None:
    p = sub.add_parser("demo", help="the main job: victim, standard vs copycat, calibration, table and plot")
    add_common(p)
    add_victim(p)
    add_extraction(p)
    add_accountant(p)
    add_calibration(p)
    p.add_argument("--out_dir", default=None, help="where results go (default: results/demo)")
