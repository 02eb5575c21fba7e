"""train-teachers: a PATE teacher ensemble on disjoint partitions of the victim's training data.

Each teacher trains with the one training loop (models/training.py) on its own part only, then is
evaluated on the held-out set; the file holds every teacher, P.json every teacher's accuracy.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from common import checks
from common.runtime import resolve_device, set_seed
from data.registry import load_splits
from models import architectures
from models.teachers import TeacherEnsemble, default_num_models, partition, save_teachers
from models.training import accuracy, make_optimizer, random_shift, train_epochs
from models.victim_training import check_target
from parameters import POS_INT, add_common, add_pate, add_training, number, preset_text

TEACHER_ARCH = "mnistnet"  # the small CNN, on 28x28 and 32x32 images alike


def train_teachers(s, *, progress: bool = True) -> tuple:
    check_target(s.teachers_path, overwrite=bool(s.overwrite), flag="--teachers_path", command="train-teachers")
    checks.whole("--teacher_epochs", s.teacher_epochs, lo=1)
    device = resolve_device(s.device)
    set_seed(s.seed)
    splits = load_splits(s.dataset, s.data_dir)
    n = len(splits.victim_y)
    num_models = s.num_models or default_num_models(n)
    parts = partition(n, num_models, s.seed)
    augment = random_shift(s.victim_shift) if s.victim_shift else None
    models, accuracies = [], []
    start = time.perf_counter()
    for i, part in enumerate(tqdm(parts, desc=f"teachers on {s.dataset}", unit="teacher", disable=not progress)):
        model = architectures.create(TEACHER_ARCH, splits.spec).to(device)
        optimizer = make_optimizer(model, optimizer=s.optimizer, lr=s.lr, momentum=s.momentum,
                                   weight_decay=s.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.teacher_epochs)
        train_epochs(model, splits.victim_x[part], splits.victim_y[part], optimizer=optimizer,
                     epochs=s.teacher_epochs, batch_size=min(s.batch_size, len(part)), device=device,
                     generator=torch.Generator().manual_seed(s.seed * 100_003 + i), augment=augment,
                     scheduler=scheduler)
        models.append(model.eval())
        accuracies.append(round(accuracy(model, splits.eval_x, splits.eval_y, device), 2))
    seconds = time.perf_counter() - start
    ensemble = TeacherEnsemble(models, splits.spec.num_classes, device)
    votes = ensemble.votes(splits.eval_x)
    plurality = 100.0 * float((votes.argmax(1) == splits.eval_y).float().mean())
    meta = {"dataset": s.dataset, "architecture": TEACHER_ARCH, "num_models": num_models,
            "images_per_teacher": [len(p) for p in parts], "epochs": s.teacher_epochs, "seed": s.seed,
            "teacher_accuracy": accuracies, "mean_teacher_accuracy": round(float(np.mean(accuracies)), 2),
            "plurality_vote_accuracy": round(plurality, 2), "test_size": len(splits.eval_y),
            "train_time_s": round(seconds, 1), "device": str(device)}
    save_teachers(models, s.teachers_path, meta)
    acc = np.array(accuracies)
    report = (f"{num_models} teachers ({TEACHER_ARCH}) on {s.dataset}, {min(meta['images_per_teacher'])}-"
              f"{max(meta['images_per_teacher'])} training images each, {s.teacher_epochs} epochs in {seconds:.0f} s\n"
              f"teacher accuracy on {len(splits.eval_y)} held-out images: mean {acc.mean():.2f}%, "
              f"min {acc.min():.2f}%, max {acc.max():.2f}%; plurality vote {plurality:.2f}%\n"
              f"per teacher: {', '.join(f'{a:.1f}' for a in accuracies)}\n"
              f"saved {s.teachers_path} and {s.teachers_path}.json")
    return meta, report


def add_arguments(sub) -> None:
    p = sub.add_parser("train-teachers", help="train a PATE teacher ensemble on disjoint parts of the victim's data")
    add_common(p)
    add_training(p)
    add_pate(p)
    p.add_argument("--num_models", type=number(int, 1, 100_000), default=None,
                   help="teachers (default: one per 240 training images, as 250 on MNIST's 60,000; 10 to 250)")
    p.add_argument("--teacher_epochs", type=POS_INT, default=None, help=preset_text("teacher_epochs"))
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing ensemble at --teachers_path (default: refuse)")
