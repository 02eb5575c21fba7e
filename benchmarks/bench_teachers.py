"""PATE teacher votes: all teachers in one vectorised pass against one Python call per teacher, one run.

Workload (the issue's): 250 small-CNN teachers (the paper's MNIST ensemble, mnistnet) vote on a batch
of 64 MNIST-sized images; the histograms of both paths must be identical. The paper reports 0.46 s per
batch for its teachers on a GPU. Timed: the default (vmapped, CPU_TEACHERS teachers per call on a CPU,
all on a GPU), one vmapped call for all teachers, and the per-teacher loop.
Writes benchmarks/results/teachers.json.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.results_io import best_of, write_result
from data.registry import create as create_spec
from models import architectures
from models.teachers import CPU_TEACHERS, TeacherEnsemble

PAPER_GPU_S = 0.46  # seconds per batch of the authors' PATE teachers, on a GPU


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", type=int, default=250)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    spec = create_spec("mnist-5k")
    device = torch.device(args.device)
    ensemble = TeacherEnsemble([architectures.create("mnistnet", spec) for _ in range(args.teachers)],
                               spec.num_classes, device)
    x = torch.rand(args.batch, 1, 28, 28)
    same = torch.equal(ensemble.votes(x), ensemble.votes_loop(x))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    vec_best, vec_median = best_of(lambda: (ensemble.votes(x), sync()), args.repeats, warmup=True)
    whole = TeacherEnsemble(ensemble.models, spec.num_classes, device, teachers_per_call=args.teachers)
    one_best, one_median = best_of(lambda: (whole.votes(x), sync()), args.repeats, warmup=True)
    loop_best, loop_median = best_of(lambda: (ensemble.votes_loop(x), sync()), args.repeats, warmup=True)
    result = {
        "workload": f"{args.teachers} mnistnet teachers vote on a batch of {args.batch} 28x28 images",
        "device": str(device), "threads": torch.get_num_threads(),
        "default_s": round(vec_best, 3), "default_median_s": round(vec_median, 3),
        "default_teachers_per_call": CPU_TEACHERS if device.type == "cpu" else args.teachers,
        "one_call_s": round(one_best, 3), "one_call_median_s": round(one_median, 3),
        "loop_s": round(loop_best, 3), "loop_median_s": round(loop_median, 3),
        "speedup_default_vs_loop": round(loop_best / vec_best, 2),
        "speedup_one_call_vs_loop": round(loop_best / one_best, 2), "identical_histograms": same,
        "paper_gpu_s": PAPER_GPU_S,
    }
    write_result("teachers", result)


if __name__ == "__main__":
    main()
