"""A PATE teacher ensemble (Papernot et al. 2017, 2018): N models, each trained on its own disjoint part
of the victim's training data. Each teacher votes for a class; the vote histogram of a query is what
the GNMax accountant prices (privacy/accountants.py, --cost_measure pate).

All teachers vote for a batch in one vectorised pass: their weights are stacked once
(torch.func.stack_module_state) and one functional forward runs under torch.func.vmap. On a GPU that
is one call for the whole ensemble (up to GPU_IMAGES images in flight). On a CPU the work is compute-
bound (250 small CNNs on 64 images are ~50 GFLOP), and one huge vmapped call measured 2x slower than
a plain loop on 2 cores (benchmarks/bench_teachers.py), so the CPU runs the vmapped forward in chunks of
CPU_TEACHERS teachers, which matches the loop. votes_loop() is the plain per-teacher loop, kept as the
benchmark's baseline and the tests' reference.

Checkpoint: P holds {"states": [state dict per teacher], "meta": {...}}, loadable with weights_only;
P.json holds the metadata (each teacher's accuracy included) for people.
"""
from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from common.errors import UserError
from common.io import atomic_torch_save, atomic_write_text, safe_torch_load
from data.registry import to_float
from models import architectures

PAPER_SHARE = 240  # training images per teacher in the paper: 60,000 MNIST images over 250 teachers
MIN_TEACHERS, MAX_TEACHERS = 10, 250
GPU_IMAGES = 65536  # teachers x batch images per vectorised call on a GPU (bounds activation memory)
CPU_TEACHERS = 4  # teachers per vectorised call on a CPU (measured fastest; see the module docstring)
FORMAT = "pate-teachers-v1"


def default_num_models(train_size: int) -> int:
    """The paper's share of training data per teacher (240 images), within 10..250 teachers."""
    return max(MIN_TEACHERS, min(MAX_TEACHERS, round(train_size / PAPER_SHARE)))


def partition(n: int, num_models: int, seed: int) -> list:
    """Disjoint, near-equal parts of a seeded permutation of range(n), one per teacher."""
    if not 1 <= num_models <= n:
        raise UserError(f"--num_models must lie in 1..{n} (one training image per teacher at least), got {num_models}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.tensor_split(order, num_models))


class TeacherEnsemble:
    """Vote histograms of N teachers of one architecture."""

    def __init__(self, models: list, num_classes: int, device: torch.device, teachers_per_call: int | None = None):
        if not models:
            raise UserError("a teacher ensemble needs at least one teacher")
        self.models = [m.to(device).eval() for m in models]
        self.num_classes, self.device = num_classes, device
        self.teachers_per_call = teachers_per_call  # None: CPU_TEACHERS on a CPU, as many as fit on a GPU
        self.params, self.buffers = stack_module_state(self.models)
        self.base = copy.deepcopy(self.models[0]).to("meta")
        self._local = threading.local()

    def _vectorised(self):
        """This thread's vectorised call. functional_call swaps the stacked parameters into its module while
        it runs, so each thread (a server's request threads) gets a module of its own."""
        call = getattr(self._local, "call", None)
        if call is None:
            base = copy.deepcopy(self.base)

            def one(params, buffers, x):
                return functional_call(base, (params, buffers), (x,))
            call = self._local.call = vmap(one, in_dims=(0, 0, None))
        return call

    def __len__(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def predictions(self, x: torch.Tensor) -> torch.Tensor:
        """(N, B) class predicted by each teacher for each image, in one vectorised pass per chunk."""
        x = to_float(x).to(self.device)
        per_call = self.teachers_per_call or (
            CPU_TEACHERS if self.device.type == "cpu" else max(1, GPU_IMAGES // max(1, len(x))))
        out = []
        for start in range(0, len(self.models), per_call):
            params = {k: v[start:start + per_call] for k, v in self.params.items()}
            buffers = {k: v[start:start + per_call] for k, v in self.buffers.items()}
            out.append(self._vectorised()(params, buffers, x).argmax(2))
        return torch.cat(out).cpu()

    def votes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) int64 vote histogram per image: how many teachers chose each class."""
        return _histogram(self.predictions(x), self.num_classes)

    @torch.no_grad()
    def votes_loop(self, x: torch.Tensor) -> torch.Tensor:
        """The same histogram, one Python call per teacher (the baseline the vectorised pass replaces)."""
        x = to_float(x).to(self.device)
        return _histogram(torch.stack([m(x).argmax(1) for m in self.models]).cpu(), self.num_classes)


def _histogram(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(predictions, num_classes).sum(0)


def teachers_command(dataset: str, path) -> str:
    return f"python main.py train-teachers --dataset {dataset} --teachers_path {path}"


def save_teachers(models: list, path, meta: dict) -> None:
    """All teachers' weights and the metadata to P (atomically), the metadata to P.json."""
    path = Path(path)
    atomic_torch_save({"format": FORMAT, "states": [m.state_dict() for m in models], "meta": meta}, path)
    atomic_write_text(Path(str(path) + ".json"), json.dumps(meta, indent=2) + "\n")


def load_teachers(path, spec, *, device=torch.device("cpu"), flag: str = "--teachers_path") -> tuple:
    """(TeacherEnsemble, metadata) for dataset `spec`; anything else is a UserError naming the fix.
    `flag` names the setting that chose the path, for the message."""
    path = Path(path)
    blob, make = _read(path, spec.name, flag)
    meta = blob["meta"]
    models = []
    for i, state in enumerate(blob["states"]):
        model = architectures.create(meta.get("architecture"), spec)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise UserError(f"teacher {i} in {path} does not fit architecture '{meta.get('architecture')}' "
                            f"({str(exc).splitlines()[0]}). Train a new one with: {make}") from exc
        models.append(model)
    return TeacherEnsemble(models, spec.num_classes, device), dict(meta)


def check_teachers(path, dataset: str, *, flag: str = "--teachers_path") -> dict:
    """The metadata of the teacher file at `path` for `dataset`, read and checked as load_teachers does
    before it builds the teachers (a server checks it before it makes any file); UserError otherwise."""
    return dict(_read(Path(path), dataset, flag)[0]["meta"])


def _read(path: Path, dataset: str, flag: str) -> tuple:
    """(the file's contents, the command that makes it) of a teacher file for `dataset`; UserError otherwise."""
    # a file there may be anything the user keeps: a new one goes to a new path
    make = teachers_command(dataset, "NEW.pt" if path.exists() or path.is_symlink() else path)
    if path.is_dir():
        raise UserError(f"teacher ensemble {path} is a folder, not a file; pass the file's path as {flag}")
    if not path.is_file():
        raise UserError(f"teacher ensemble {path} does not exist. Create it with: {make}")
    blob = safe_torch_load(path, "teacher ensemble", f"it is corrupt or not a teacher file. Pass the right {flag}, "
                                                     f"or train one at a new path with: {make}")
    ok = (isinstance(blob, dict) and blob.get("format") == FORMAT and isinstance(blob.get("states"), list)
          and blob["states"] and isinstance(blob.get("meta"), dict))
    if not ok:
        raise UserError(f"{path} is not a teacher ensemble. Pass the right {flag}, or train one at a new path with: "
                        f"{make}")
    meta = blob["meta"]
    if meta.get("dataset") != dataset:
        raise UserError(f"teacher ensemble {path} was trained on '{meta.get('dataset')}', not '{dataset}'. "
                        f"Pass the right {flag}, or create one with: {make}")
    if meta.get("architecture") not in architectures.ARCHITECTURES:
        raise UserError(f"teacher ensemble {path} names an unknown architecture {meta.get('architecture')!r}; "
                        f"train a new one with: {make}")
    return blob, make
