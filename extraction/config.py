"""The extraction run's typed settings: one ExtractionConfig of parts, each the settings one part reads.

Built once from a command's resolved settings (ExtractionConfig.of(settings.as_dict()); parameters.py
holds the defaults). run_extraction and its helpers read these parts only; `settings` keeps the whole
resolved mapping for what describes the run (params.json, the resume check).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from attacks import ATTACKS, options_for
from pow.calibration import CalibrationConfig


@dataclass(frozen=True)
class RunConfig:
    """Where the run's data, victim and outputs are, and how it runs."""
    dataset: str
    data_dir: str
    seed: int
    device: str
    victim_path: str
    victim_arch: str | None
    victim_output: str
    out_dir: str
    fresh: bool


@dataclass(frozen=True)
class AttackConfig:
    """The attack: its mode and own Options, its budget and how it spends it."""
    mode: str
    budget: int
    query_batch: int
    batches_per_round: int
    sampling: str
    jacobian_cap: int | None
    ood_pool: str
    options: Any = None  # the mode's Options dataclass (None for a mode without any)


@dataclass(frozen=True)
class AccountantConfig:
    """The cost measure that prices the run, and the accountants' parameters."""
    cost_measure: str
    k: int
    sigma: float
    delta: float
    cap_rdp: bool
    rdp_conversion: str
    pate_sigma: float | None
    teachers_path: str | None
    reps_cache: str | None


@dataclass(frozen=True)
class PowConfig:
    """The calibrated PoW: the baseline (None: unpriced), the calibration, and how the PoW is paid."""
    calibration: str | None
    pricing: CalibrationConfig
    pow: str
    puzzle: str
    pow_subs: int
    solver: str
    workers: int | None
    timing_table: str
    timing_csv: str


@dataclass(frozen=True)
class TrainingConfig:
    """How the stolen copy is built and trained."""
    stolen_arch: str | None
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
