"""The run folder of one extraction: its lock, its saved state, and the files derived from that state.

state.pt is the single source of truth. log.csv and params.json are rebuilt from it at every commit
and whenever a run starts again, so they always agree with it. The rules:
  * one process at a time per folder (an flock on FOLDER/.lock);
  * temporary files of atomic writes that a kill left behind are deleted at start;
  * --fresh deletes state.pt (and stolen.pt) before anything new is written, so an interrupted fresh
    run can never be mixed with the old one; log.csv and params.json are replaced at the first commit;
  * a log.csv without state.pt is refused, never silently restarted over;
  * state.pt is loaded with weights_only=True and checked key by key;
  * the queries and answers go to queries/round-NNNNNN.pt, one file per round, each written once: the
    saved state grows linearly with the queries and a commit never rewrites what is saved (state.pt
    itself holds only the small parts); a round file past the last committed round is deleted;
  * a resume must have the same settings (paths compared resolved; out_dir, device and budget may
    differ) and the same input files, by content hash.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pandas as pd
import torch

from common.errors import UserError
from common.io import (
    FolderLock,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_text,
    file_sha256,
    json_text,
    remove_stale_tmp,
    safe_torch_load,
)
from privacy.accountants import PATE_MEASURES  # the cost measures that read --teachers_path

STATE, LOG, PARAMS, STOLEN, QUERIES = "state.pt", "log.csv", "params.json", "stolen.pt", "queries"
DONE = "DONE.json"  # written once a run has spent its whole budget: the hashes of its log and state
STATE_VERSION = 3
#: settings that may differ between a run and its resumption
RESUMABLE_CHANGES = {"fresh", "device", "budget", "command", "out_dir", "reps_cache"}
EMBEDDED = {"mnist-5k"}  # datasets that read nothing from --data_dir
FOLDER_POOLS = {"mnist", "fashion-mnist"}  # out-of-distribution pools that may read --data_dir
#: settings that name a file or folder: compared as resolved paths
PATH_SETTINGS = ("data_dir", "victim_path", "calibration", "timing_csv", "teachers_path")
STATE_KEYS = {"version": int, "settings": dict, "resolved": dict, "inputs": dict, "rows": list, "saved_queries": int,
              "round_hashes": list,
              "pow_time_s": float, "pow_work": float, "stolen": dict, "optimizer": dict, "oracle": dict,
              "attack": dict, "generator": torch.Tensor, "torch_rng": torch.Tensor, "params": dict}
ROUND_NAME = re.compile(r"round-([0-9]{6})\.pt")
FRESH = "pass --fresh to start over there (the old results are replaced), or choose another --out_dir"


def comparable(settings: dict) -> dict:
    """The settings that must match for a resume, with paths resolved (dir/, ./dir and dir agree): those
    given (a run's identity, ExtractionConfig.identity()) less those a resume may change and those this
    run does not read."""
    out = {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}
    if not (out.get("calibration") and out.get("timing_table") == "measured"):
        out.pop("timing_csv", None)  # not read by this run: its spelling does not matter
    if out.get("cost_measure") not in PATE_MEASURES:
        out.pop("teachers_path", None)
        out.pop("pate_sigma", None)
    if out.get("dataset") in EMBEDDED and out.get("ood_pool") not in FOLDER_POOLS:
        out.pop("data_dir", None)  # nothing is read from it
    for key in PATH_SETTINGS:
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out


def input_files(config) -> dict:
    """The input files a run reads, by setting name: victim checkpoint, teachers, baseline, timing table
    (`config`: an extraction.config.ExtractionConfig)."""
    files = {"victim_path": config.run.victim_path}
    if config.accountant.cost_measure in PATE_MEASURES:
        files["teachers_path"] = config.accountant.teachers_path
    if config.pow.calibration:
        files["calibration"] = config.pow.calibration
        if config.pow.timing_table == "measured":
            files["timing_csv"] = config.pow.timing_csv
    return files


def run_file_of(out_dir: Path, path) -> str | None:
    """The name of the run file (log.csv, state.pt, ...) that `path` is inside out_dir, else None."""
    try:
        rel = Path(path).resolve().relative_to(Path(out_dir).resolve())
    except ValueError:
        return None
    parts = rel.parts
    if parts and (parts[0] in (STATE, LOG, PARAMS, STOLEN, DONE, ".lock") or parts[0] == QUERIES):
        return "/".join(parts)
    return None


def enclosing_run(out_dir) -> Path | None:
    """The run folder (one holding a state.pt or DONE.json) that out_dir lies inside, else None."""
    for folder in Path(out_dir).resolve().parents:
        if (folder / STATE).is_file() or (folder / DONE).is_file():
            return folder
    return None


def fingerprint(files: dict) -> dict:
    """{setting: sha256 of the file's content} for the files that exist (missing ones fail later, clearly)."""
    return {name: file_sha256(path) for name, path in files.items() if Path(path).is_file()}


def _plain(value):
    """Numbers as plain Python int/float (numpy scalars are refused by weights_only loading)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int) or (hasattr(value, "dtype") and "int" in str(value.dtype)):
        return int(value)
    return float(value)


class RunFolder:
    """Use as a context manager: creates and locks the folder, and removes stale temporary files."""

    def __init__(self, out_dir):
        self.dir = Path(out_dir)
        self._lock = FolderLock(self.dir, "extraction run")

    def __enter__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        try:
            for name in (STATE, LOG, PARAMS, STOLEN):
                remove_stale_tmp(self.dir / name)
            for tmp in (self.dir / QUERIES).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def discard(self) -> None:
        """--fresh: make the old run unusable (DONE.json, state.pt, then stolen.pt) before anything new is
        written."""
        for name in (DONE, STATE, STOLEN):
            try:
                (self.dir / name).unlink()
            except FileNotFoundError:
                pass
        _fsync_dir(self.dir)
        for chunk in self._chunks():
            chunk.unlink(missing_ok=True)

    def _chunk(self, index: int) -> Path:
        return self.dir / QUERIES / f"round-{index:06d}.pt"

    def _chunks(self) -> list:
        """The round files, by name round-NNNNNN.pt; other files in queries/ are not ours and are left alone."""
        return sorted(p for p in (self.dir / QUERIES).glob("round-*.pt") if ROUND_NAME.fullmatch(p.name))

    def _load_queries(self, state: dict) -> tuple:
        """(xs, answers) of every committed round, checked; round files past the last one are deleted."""
        rounds = len(state["rows"])
        xs, answers = [], []
        hashes = state["round_hashes"]
        if len(hashes) != rounds:
            raise UserError(f"{self.dir / STATE} lists {len(hashes)} round files for {rounds} rounds; {FRESH}")
        for index in range(1, rounds + 1):
            path = self._chunk(index)
            if not path.is_file():
                raise UserError(f"{path} is missing, so the queries of round {index} are lost; {FRESH}")
            if file_sha256(path) != hashes[index - 1]:
                raise UserError(f"{path} is not the file this run saved (its content hash differs); {FRESH}")
            chunk = safe_torch_load(path, "saved queries", f"it is damaged; {FRESH}")
            ok = (isinstance(chunk, dict) and isinstance(chunk.get("xs"), list) and isinstance(chunk.get("answers"),
                                                                                               list)
                  and len(chunk["xs"]) == len(chunk["answers"])
                  and all(isinstance(t, torch.Tensor) for t in chunk["xs"] + chunk["answers"]))
            if not ok:
                raise UserError(f"{path} is not a round of queries and answers; {FRESH}")
            xs.extend(chunk["xs"])
            answers.extend(chunk["answers"])
        for path in self._chunks():
            if int(path.stem.split("-")[1]) > rounds:
                path.unlink()  # written by a round whose state never committed
        sent = sum(len(t) for t in xs)
        if sent != state["saved_queries"] or sum(len(t) for t in answers) != sent:
            raise UserError(f"{self.dir / QUERIES} holds {sent} queries, the state {state['saved_queries']}; {FRESH}")
        return xs, answers

    def load(self, identity: dict, inputs: dict, *, budget: int) -> dict | None:
        """The saved state, checked against the run's identity (the settings it reads, by flag name: see
        ExtractionConfig.identity) and inputs; None when there is none to resume."""
        path = self.dir / STATE
        if not path.exists():
            if (self.dir / LOG).exists():
                raise UserError(f"{self.dir / LOG} exists but {path} does not (it was deleted, or a --fresh run "
                                f"was interrupted), so that run cannot resume and its log would be lost; {FRESH}")
            return None
        if not path.is_file():
            raise UserError(f"{path} is not a file; {FRESH}")
        state = safe_torch_load(path, "saved state", f"it is damaged or not a run's state; {FRESH}")
        check_state(state, path)
        # old: resolved where and when the run began. A state saved before identities were (version 3 without
        # "identity") is read for today's identity's settings only: the others (other modes' and commands'
        # flags) were never read by the run
        new = comparable(identity)
        saved = state.get("identity")
        old = comparable(saved if saved is not None else {k: state["resolved"].get(k) for k in identity})
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise UserError(f"{self.dir} holds a run with other settings ({', '.join(changed)}); {FRESH}")
        edited = sorted(k for k in set(state["inputs"]) | set(inputs) if state["inputs"].get(k) != inputs.get(k))
        if edited:
            raise UserError(f"the content of {', '.join('--' + k for k in edited)} changed since {self.dir} "
                            f"started (content hash differs); restore the file, or {FRESH}")
        done = int(state["oracle"]["queries"])
        if done > budget:
            raise UserError(f"{self.dir} already holds {done} queries, more than --budget {budget}; pass "
                            f"--budget {done} or more to resume it, or {FRESH}")
        state["xs"], state["answers"] = self._load_queries(state)
        return state

    def commit(self, state: dict, columns: list, *, xs: list, answers: list) -> dict:
        """Save this round's queries and answers (a new file), then the state atomically, then rebuild
        log.csv and params.json from it. `state` holds no queries: only their count, saved_queries."""
        state = {**state, "rows": [{k: _plain(v) for k, v in row.items()} for row in state["rows"]],
                 "pow_time_s": float(state["pow_time_s"]), "pow_work": float(state["pow_work"]),
                 "version": STATE_VERSION}
        chunk = self._chunk(len(state["rows"]))
        atomic_torch_save({"xs": xs, "answers": answers}, chunk)
        state["round_hashes"] = [*state["round_hashes"], file_sha256(chunk)]
        check_state(state, self.dir / STATE)
        atomic_torch_save(state, self.dir / STATE)
        self.write_outputs(state, columns)
        return state

    def write_outputs(self, state: dict, columns: list) -> None:
        atomic_write_csv(self.dir / LOG, pd.DataFrame(state["rows"], columns=columns))
        atomic_write_text(self.dir / PARAMS, json_text(state["params"]))

    def mark_done(self, state: dict, budget: int) -> Path:
        """DONE.json: the run spent its budget; the hashes tie the mark to this log and state."""
        path = self.dir / DONE
        atomic_write_text(path, json_text({"queries": int(state["oracle"]["queries"]), "budget": int(budget),
                                           "log_sha256": file_sha256(self.dir / LOG),
                                           "state_sha256": file_sha256(self.dir / STATE),
                                           **{k: state["settings"].get(k) for k in ("dataset", "mode", "seed")},
                                           "final": state["rows"][-1]}))
        return path

    def save_stolen(self, stolen_state: dict, dataset: str) -> Path:
        path = self.dir / STOLEN
        atomic_torch_save({"state_dict": stolen_state, "dataset": dataset}, path)
        return path


def finished(out_dir) -> dict | None:
    """The run's DONE.json when the run in out_dir spent its budget and its log and state are still the
    ones the mark names; None for a run not finished, half-written, or changed since."""
    folder = Path(out_dir)
    try:
        mark = json.loads((folder / DONE).read_text())
        ok = (isinstance(mark, dict) and mark.get("queries") == mark.get("budget")
              and mark.get("log_sha256") == file_sha256(folder / LOG)
              and mark.get("state_sha256") == file_sha256(folder / STATE))
    except (OSError, ValueError):
        return None
    return mark if ok else None


def broken(out_dir) -> str | None:
    """Why the run folder cannot resume (a log without its state, a damaged or incomplete state, a missing
    or changed round file), or None: empty, absent, or resumable. Reads only; safe beside a live run
    (every file is replaced atomically)."""
    folder = Path(out_dir)
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    if not (folder / STATE).exists():
        return "a log without its state" if (folder / LOG).exists() else None
    try:
        state = safe_torch_load(folder / STATE, "saved state", "it is damaged")
        check_state(state, folder / STATE)
        for index, digest in enumerate(state["round_hashes"], start=1):
            chunk = folder / QUERIES / f"round-{index:06d}.pt"
            if not chunk.is_file() or file_sha256(chunk) != digest:
                return f"its round file {chunk.name} is missing or changed"
    except UserError as exc:
        return str(exc)
    return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_state(state, path) -> None:
    """A UserError unless `state` has every key, of the right type, and its parts agree with each other."""
    bad = f"{path} is not a complete extraction state ({{}}); {FRESH}"
    if not isinstance(state, dict):
        raise UserError(bad.format(f"it holds a {type(state).__name__}"))
    missing = sorted(set(STATE_KEYS) - set(state))
    if missing:
        raise UserError(bad.format(f"missing {', '.join(missing)}"))
    wrong = sorted(k for k, t in STATE_KEYS.items() if not isinstance(state[k], t) or isinstance(state[k], bool))
    if wrong:
        raise UserError(bad.format(f"wrong type of {', '.join(wrong)}"))
    if state["version"] != STATE_VERSION:
        raise UserError(bad.format(f"format version {state['version']}, this code writes {STATE_VERSION}"))
    rows, oracle = state["rows"], state["oracle"]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise UserError(bad.format("no logged rounds"))
    if [r.get("round") for r in rows] != list(range(1, len(rows) + 1)):
        raise UserError(bad.format("its rounds are not numbered 1, 2, ..."))
    queries = oracle.get("queries")
    if not isinstance(queries, int) or rows[-1].get("queries") != queries or not 0 <= state["saved_queries"] <= queries:
        raise UserError(bad.format(f"its log ends at {rows[-1].get('queries')} queries, its oracle counted "
                                   f"{queries} and it saved {state['saved_queries']}"))
    if not all(math.isfinite(v) for v in (state["pow_time_s"], state["pow_work"])):
        raise UserError(bad.format("its PoW totals are not finite"))
