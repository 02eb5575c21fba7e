"""The extraction run's typed settings: one ExtractionConfig of parts, each the settings one part reads.

Built once from a command's resolved settings (ExtractionConfig.of(settings.as_dict())). Each part's field
defaults are the flags' defaults (parameters.py reads them; the dataset presets give the rest).
run_extraction and its helpers read these parts only; `settings` keeps the whole resolved mapping for what
describes the run (params.json, the resume check).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from attacks import ATTACKS, options_for
from data.registry import DEFAULT_DATASET
from pow import kinds
from pow.calibration import CalibrationConfig


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where the run's data, victim and outputs are, and how it runs. victim_path and out_dir default to
    paths derived from the dataset and mode (parameters.resolve)."""
    dataset: str = DEFAULT_DATASET
    data_dir: str = "data"
    seed: int = 0
    device: str = "auto"
    victim_path: str | None = None
    victim_arch: str | None = None
    victim_output: str = "labels"
    out_dir: str | None = None
    fresh: bool = False


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """The attack: its mode and own Options, its budget and how it spends it."""
    mode: str = "standard"
    budget: int = 1024
    query_batch: int = CalibrationConfig.query_batch  # the batch the calibration prices
    batches_per_round: int = 4
    sampling: str = "random"
    jacobian_cap: int | None = None
    ood_pool: str = "photos"
    options: Any = None  # the mode's Options dataclass (None for a mode without any)


@dataclass(frozen=True, kw_only=True)
class AccountantConfig:
    """The cost measure that prices the run, and the accountants' parameters (k, sigma and delta are the
    dataset preset's; teachers_path defaults to a path derived from the dataset)."""
    cost_measure: str = "entropy"
    k: int
    sigma: float
    delta: float
    cap_rdp: bool = False
    rdp_conversion: str = "classic"
    pate_sigma: float | None = None
    teachers_path: str | None = None
    reps_cache: str | None = None


@dataclass(frozen=True, kw_only=True)
class PowConfig:
    """The calibrated PoW: the baseline (None: unpriced), the calibration, and how the PoW is paid."""
    calibration: str | None = None
    pricing: CalibrationConfig = CalibrationConfig()
    pow: str = "simulated"
    puzzle: str = kinds.DEFAULT
    pow_subs: int = kinds.DEFAULT_SUBS
    solver: str = "python"
    workers: int | None = None  # None: every core
    timing_table: str = "live"
    timing_csv: str = "results/pow_timing.csv"


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """How the stolen copy is built and trained (all but the architecture from the dataset preset)."""
    stolen_arch: str | None = None
    stolen_epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float


def _take(cls, values: dict, **given):
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name not in given}, **given)


@dataclass(frozen=True)
class ExtractionConfig:
    run: RunConfig
    attack: AttackConfig
    accountant: AccountantConfig
    pow: PowConfig
    training: TrainingConfig
    settings: dict  # every resolved setting of the command, as given (params.json, the resume check)

    @classmethod
    def of(cls, values: dict) -> "ExtractionConfig":
        """The parts from a command's resolved settings. An unknown mode gets no options here; validate()
        names the valid ones."""
        options = options_for(values["mode"], values) if values["mode"] in ATTACKS else None
        return cls(run=_take(RunConfig, values), attack=_take(AttackConfig, values, options=options),
                   accountant=_take(AccountantConfig, values),
                   pow=_take(PowConfig, values, pricing=CalibrationConfig.of(values)),
                   training=_take(TrainingConfig, values), settings=dict(values))

    def identity(self) -> dict:
        """The settings this run reads, by flag name (its own mode's options only, no other command's flag):
        what a run folder compares before it resumes (extraction.state.comparable relaxes it)."""
        parts = (RunConfig, AttackConfig, AccountantConfig, PowConfig, TrainingConfig, CalibrationConfig)
        names = [f.name for part in parts for f in dataclasses.fields(part) if f.name not in ("options", "pricing")]
        if self.attack.options is not None:
            names += [f.name for f in dataclasses.fields(self.attack.options)]
        return {k: self.settings.get(k) for k in dict.fromkeys(names)}

    def replace(self, **settings) -> "ExtractionConfig":
        """The same run with some settings changed (by their flag names)."""
        return ExtractionConfig.of({**self.settings, **settings})
