"""What makes an attacker's private-kNN cost grow faster than a legitimate user's: a factorial experiment.

The paper's accountant lets the k training points nearest to a query (in the victim's log-softmax space)
vote with their labels; the query's cost is the data-dependent GNMax epsilon of that histogram. Three
choices differ between our runs and the authors', and each may change how fast an out-of-distribution
attacker's cost grows against an in-distribution user's:

  * the victim (which model's log-softmax space the neighbours are found in);
  * the kNN's training set (its size: 3,000 images on mnist-5k, 60,000 on MNIST);
  * the attacker's out-of-distribution pool (photo crops, or natural images such as CIFAR-10).

`measure` runs every combination: the same random in-distribution queries (from the kNN set's own
attacker pool, the `standard` user) and out-of-distribution queries (the pool, as copycat and knockoff
draw them) are voted on, and each combination gives the mean epsilon per query of both and their ratio.
A fourth factor is the GNMax noise sigma: the same votes priced at each. `ceiling` gives, per sigma, the
largest growth the accountant allows at all (a tie over a unanimous vote): at the paper's sigma = 28 and
delta = 1e-5, every query costs between 0.161 and 0.244, so no attacker's cost can grow more than 1.51x
faster, while the authors' MNIST copycat paid 0.530 per query.
`effects` then reads the main effect of each factor: the mean growth at each of its levels, averaged
over the other factors' levels.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from common import checks
from common.errors import ConfigError, UserError
from common.io import (
    atomic_savefig,
    atomic_write_csv,
    atomic_write_text,
    check_outputs,
    params_beside,
    write_params_beside,
)
from common.runtime import resolve_device, set_seed
from common.tables import markdown
from data.ood import ood_capacity, ood_pool
from data.registry import DATASETS, load_splits
from models.checkpoint import load_victim, read_victim_meta
from models.oracle import Victim
from pow.paper import PAPER_DIR, growth_claims
from privacy.accountants import knn_costs
from privacy.knn import KnnVoter
from privacy.rdp import MIN_SIGMA

FACTORS = ("victim", "knn_set", "pool", "sigma")
PAPER_GROWTH = 7.0  # the paper's text: an attacker's privacy cost "accumulates up to 7x faster"
LEGIT_TOLERANCE = 0.15  # our legitimate cost per query is judged against the authors' within this share


@dataclass(frozen=True)
class GrowthConfig:
    """The accountant and the streams: `queries` of each kind, k neighbours, the GNMax sigmas (a factor
    too: the votes are counted once and priced at each) and delta."""
    queries: int = 2048
    k: int = 300
    sigmas: tuple = (28.0, 10.0)
    delta: float = 1e-5
    seed: int = 0

    def __post_init__(self):
        checks.whole("--queries", self.queries, lo=1)
        checks.whole("--k", self.k, lo=1)
        if not self.sigmas:
            raise ConfigError("--sigmas needs at least one sigma")
        for sigma in self.sigmas:
            checks.finite("--sigmas", sigma, lo=MIN_SIGMA, hi=1e6)
        checks.finite("--delta", self.delta, lo=0, hi=1, lo_open=True, hi_open=True)


def ceiling(k: int, num_classes: int, *, sigma: float, delta: float) -> dict:
    """The cheapest and the dearest query the accountant can price: k unanimous votes, and k votes split
    evenly over two classes (a tie: the data-independent GNMax bound). Their ratio is the largest growth
    any attacker can reach, whatever it sends."""
    votes = np.zeros((2, num_classes), dtype=np.int64)
    votes[0, 0], votes[1, 0], votes[1, 1] = k, k - k // 2, k // 2
    eps = knn_costs(votes, sigma=sigma, delta=delta)[0]
    return {"least_eps": float(eps[0]), "most_eps": float(eps[1]), "most_growth": float(eps[1] / eps[0])}


def _victim(path: Path, spec, device) -> tuple:
    """The checkpoint's model, loaded for the kNN set's input shape, and its metadata."""
    meta = read_victim_meta(path)
    trained_on = meta.get("dataset", spec.name)
    if trained_on in DATASETS and trained_on != "folder":  # a folder's shape is its files'; load_victim checks it
        own = DATASETS[trained_on]
        if (own.channels, own.size, own.num_classes) != (spec.channels, spec.size, spec.num_classes):
            raise UserError(f"--victims {path} was trained on '{trained_on}' ({own.channels}x{own.size}x{own.size}, "
                            f"{own.num_classes} classes), which does not take '{spec.name}' "
                            f"({spec.channels}x{spec.size}x"
                            f"{spec.size}, {spec.num_classes} classes) from --datasets; give victims of the kNN sets' "
                            f"input shape")
    model, meta = load_victim(path, dataclasses.replace(spec, name=trained_on), device=device)
    return Victim(model, device=device), meta


def measure(victims: dict, knn_sets: list, pools: list, *, data_dir, config: GrowthConfig,
            device=torch.device("cpu"), progress: bool = True) -> pd.DataFrame:
    """One row per (victim, kNN set, pool): the mean epsilon per query of the in-distribution and the
    out-of-distribution stream, and their ratio (`growth`). `victims` maps a label to a checkpoint."""
    for pool in pools:  # a pool too small for the queries is refused before anything is measured
        held = ood_capacity(pool, data_dir)
        if held is not None and held < config.queries:
            raise UserError(f"pool {pool} holds {held} images, fewer than the {config.queries} queries asked; lower "
                            f"--queries to {held}, or give a larger pool")
    rows = []
    combos = list(itertools.product(knn_sets, victims, pools))
    bar = tqdm(combos, desc="cost growth", leave=False, disable=not progress)
    cache = {}
    for knn_set, label, pool in bar:
        if knn_set not in cache:
            splits = load_splits(knn_set, data_dir)
            n = min(config.queries, len(splits.pool_x))
            order = np.random.default_rng(config.seed).permutation(len(splits.pool_x))[:n]
            cache[knn_set] = (splits, splits.pool_x[order], {})
        splits, legit, reps = cache[knn_set]
        k = min(config.k, len(splits.victim_y))  # a training set smaller than k: every point votes
        oracle, meta = _victim(Path(victims[label]), splits.spec, device)
        if label not in reps:
            reps[label] = KnnVoter(oracle.representations(splits.victim_x), splits.victim_y, k=k,
                                   num_classes=splits.spec.num_classes, seed=config.seed)
        voter = reps[label]
        ood = ood_pool(pool, len(legit), splits.spec, seed=config.seed, data_dir=data_dir)
        votes = {kind: voter.votes(oracle.log_probs(images)).numpy() for kind, images in (("legit", legit),
                                                                                           ("ood", ood))}
        for sigma in config.sigmas:
            costs = {kind: float(knn_costs(v, sigma=sigma, delta=config.delta)[0].mean()) for kind, v in votes.items()}
            rows.append({"victim": label, "victim_trained_on": meta.get("dataset"),
                         "victim_accuracy": meta.get("test_accuracy"), "knn_set": knn_set,
                         "knn_size": len(splits.victim_y), "k": k, "pool": str(pool), "sigma": float(sigma),
                         "queries": len(legit), "legit_eps_per_query": costs["legit"],
                         "ood_eps_per_query": costs["ood"],
                         "growth": costs["ood"] / costs["legit"] if costs["legit"] > 0 else float("inf"),
                         "most_growth": ceiling(k, splits.spec.num_classes, sigma=sigma,
                                                delta=config.delta)["most_growth"]})
    return pd.DataFrame(rows)


def effects(frame: pd.DataFrame) -> pd.DataFrame:
    """Each factor's main effect: per level, the mean legitimate and OOD cost per query and the mean growth
    over the other factors' levels; `swing` is the factor's largest over smallest mean growth."""
    rows = []
    for factor in FACTORS:
        means = frame.groupby(factor, sort=False)[["legit_eps_per_query", "ood_eps_per_query", "growth"]].mean()
        swing = float(means["growth"].max() / means["growth"].min()) if len(means) > 1 else 1.0
        for level, r in means.iterrows():
            rows.append({"factor": factor, "level": level, "legit_eps_per_query": r["legit_eps_per_query"],
                         "ood_eps_per_query": r["ood_eps_per_query"], "growth": r["growth"], "swing": swing})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class GrowthJob:
    """What `run` measures and where it writes: victims (label -> checkpoint), kNN sets, pools, the data
    folder, the device, the output CSV (notes in .md and the settings in .params.json beside it)."""
    victims: dict
    knn_sets: tuple
    pools: tuple
    out: Path
    data_dir: str = "data"
    device: str = "auto"
    config: GrowthConfig = GrowthConfig()

    @classmethod
    def of(cls, values: dict) -> "GrowthJob":
        """From a command's settings: --datasets, --victims (LABEL=PATH or PATH, comma-separated; by default
        each dataset's VICTIM_DIR/DATASET-victim.pt), --ood_pools, --sigmas, --queries, --k, --delta, --seed."""
        def listed(key):  # in order, each once
            return tuple(dict.fromkeys(v for v in str(values[key]).split(",") if v))

        knn_sets = listed("datasets")
        config = GrowthConfig(queries=int(values["queries"]), k=int(values["k"]), delta=float(values["delta"]),
                              seed=int(values["seed"]), sigmas=tuple(dict.fromkeys(float(v) for v in listed("sigmas"))))
        return cls(victims=parse_victims(values.get("victims"), knn_sets, values.get("victim_dir") or "checkpoints"),
                   knn_sets=knn_sets, pools=listed("ood_pools"),
                   out=Path(values.get("out") or "results/cost_growth.csv"), data_dir=values.get("data_dir") or "data",
                   device=values.get("device") or "auto", config=config)

    def outputs(self) -> dict:
        return output_files(self.out)


def output_files(out: Path) -> dict:
    """What a run with --out OUT writes: the CSV, its settings record, the figure and the notes (last)."""
    out = Path(out)
    return {"--out": out, "the settings record": params_beside(out), "the figure": out.with_suffix(".png"),
            "the notes": out.with_suffix(".md")}


def parse_victims(text, knn_sets, victim_dir) -> dict:
    """LABEL=PATH or PATH entries (label: the file's stem); by default each kNN set's DIR/DATASET-victim.pt."""
    if not text:
        return {d: Path(victim_dir) / f"{d}-victim.pt" for d in knn_sets}
    out = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            raise UserError(f"--victims '{text}' has an empty entry; give PATH or LABEL=PATH, comma-separated")
        if "=" in part and not Path(part).exists():  # a path with "=" in its name is taken whole
            label, _, path = part.partition("=")
            if not label or not path:
                raise UserError(f"--victims entry '{part}' needs both a LABEL and a PATH (LABEL=PATH), or a PATH alone")
        else:
            label, path = Path(part).name.removesuffix(".pt").removesuffix("-victim"), part
        if label in out:
            raise UserError(f"--victims names '{label}' twice; give each checkpoint its own LABEL=PATH")
        out[label] = Path(path)
    return out


def run(job: GrowthJob, *, record: dict, progress: bool = True) -> tuple:
    """Measure, read the main effects and the authors' CSVs, then write the CSV, its settings (`record`)
    and the notes; nothing is written until everything is computed, and no existing file is replaced."""
    outputs = job.outputs()
    check_outputs(outputs, {f"victim {k}": v for k, v in job.victims.items()})
    there = [str(p) for p in outputs.values() if Path(p).exists()]
    if there:
        raise UserError(f"{', '.join(there)} already exists; cost-growth never replaces a file unasked. Remove it, "
                        f"or choose another --out")
    set_seed(job.config.seed)
    frame = measure({k: str(v) for k, v in job.victims.items()}, list(job.knn_sets), list(job.pools),
                    data_dir=job.data_dir, config=job.config, device=resolve_device(job.device), progress=progress)
    paper = growth_claims(PAPER_DIR / "time_privacy_cost_mnist.csv",
                          PAPER_DIR / "model_extraction_attack_accuracy_mnist.csv")
    text = report(frame, effects(frame), paper, job.config)
    atomic_write_csv(job.out, frame)
    write_params_beside(job.out, record, "cost-growth")
    plot(frame, paper, outputs["the figure"])
    atomic_write_text(outputs["the notes"], text + f"\n![growth against sigma]({outputs['the figure'].name})\n")
    return frame, text + f"\nwritten to {job.out}, {outputs['the notes']} and {outputs['the figure']}"


def plot(frame: pd.DataFrame, paper: pd.DataFrame, path: Path) -> None:
    """Growth against sigma, a line per (kNN set, victim), the pools averaged; the accountant's ceiling
    dashed; the authors' copycat and knockoff dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (knn_set, victim), g in frame.groupby(["knn_set", "victim"], sort=False):
        line = g.groupby("sigma")["growth"].mean()
        ax.plot(line.index, line.to_numpy(), "-o", ms=4, label=f"kNN over {knn_set}, victim {victim}")
    ceiling_line = frame.groupby("sigma")["most_growth"].max()
    ax.plot(ceiling_line.index, ceiling_line.to_numpy(), "k--", lw=1, label="the most any attacker can reach")
    theirs = paper[paper["mode"].isin(["copycat", "adaptiveknockoff"])]
    for _, r in theirs.iterrows():
        ax.axhline(r["growth_per_query"], color="grey", ls=":", lw=1)
    if len(theirs):
        ax.annotate("the authors' " + ", ".join(f"{r['mode']} {r['growth_per_query']:.2f}x" for _,
                                                r in theirs.iterrows()),
                    (ceiling_line.index.min(), theirs["growth_per_query"].max()), fontsize=7, va="bottom", color="grey")
    ax.set_xlabel("GNMax sigma")
    ax.set_ylabel("attacker's kNN cost per query / legitimate user's")
    ax.set_title("What makes an attacker's kNN cost grow faster")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    atomic_savefig(fig, path)
    plt.close(fig)


def report(frame: pd.DataFrame, effects: pd.DataFrame, paper: pd.DataFrame, config) -> str:
    """Markdown: the combinations, each factor's main effect, the authors' MNIST numbers, and verdicts."""
    def table(f: pd.DataFrame) -> str:
        return markdown(f, digits=3)

    mine = paper.set_index("mode")
    legit_paper, copycat_paper = float(mine.loc["standard", "cost_per_query"]), float(mine.loc["copycat",
                                                                                               "cost_per_query"])
    ood_modes = paper[paper["mode"].isin(["copycat", "adaptiveknockoff"])]
    lines = [f"# What makes an attacker's kNN cost grow faster (k={config.k} or the training set's size, "
             f"delta={config.delta:g}, {int(frame['queries'].max())} queries of each kind at most)", "",
             "`growth`: the out-of-distribution stream's mean epsilon per query over the in-distribution "
             "stream's (a legitimate user's). `most_growth`: the largest growth the accountant allows at that "
             "sigma, whatever an attacker sends (a tied vote's epsilon over a unanimous one's).", "",
             table(frame.drop(columns=["victim_trained_on"])), "", "## Main effects", "",
             "Per factor and level: the mean over the other factors' levels. `swing`: the factor's largest over "
             "smallest mean growth.", "", table(effects), "",
             "## The authors' MNIST CSVs, read three ways", "",
             table(paper[["mode", "accuracy", "queries", "cost_per_query", "growth_per_query", "growth_per_second",
                          "growth_equal_accuracy", "at_accuracy"]]), "", "## Verdicts", ""]
    varied = effects[effects.groupby("factor")["level"].transform("count") > 1]
    if len(varied):
        top = varied.loc[varied["swing"].idxmax()]
        lines.append(f"- The factor that moves growth most: {top['factor']} (its levels' mean growth differ "
                     f"{top['swing']:.2f}x).")
    else:
        lines.append("- No factor varies here (one level each): give several --victims, --datasets, --ood_pools or "
                     "--sigmas to compare them.")
    for sigma, g in frame.groupby("sigma", sort=False):
        best = g.loc[g["growth"].idxmax()]
        bound = ceiling(int(best["k"]), 10, sigma=sigma, delta=config.delta)
        lines.append(f"- At sigma {sigma:g}, any query costs between {bound['least_eps']:.3f} and "
                     f"{bound['most_eps']:.3f}, so no attacker's cost can grow more than {bound['most_growth']:.2f}x "
                     f"faster; ours grew at most {best['growth']:.2f}x (victim {best['victim']}, kNN over "
                     f"{best['knn_set']}, pool {best['pool']}). The authors' copycat paid {copycat_paper:.3f} per "
                     f"query: {'within' if copycat_paper <= bound['most_eps'] else 'beyond'} this sigma's range.")
    lines.append("- The authors' copycat and knockoff grew " + ", ".join(
        f"{r['mode']} {r['growth_per_query']:.2f}x" for _, r in ood_modes.iterrows()) + " per query.")
    close = frame[(frame["legit_eps_per_query"] - legit_paper).abs() <= LEGIT_TOLERANCE * legit_paper]
    lines.append(f"- A legitimate user's cost per query within {LEGIT_TOLERANCE:.0%} of the authors' "
                 f"{legit_paper:.4f}: " + ("; ".join(
                     f"{r['victim']} / {r['knn_set']} / sigma {r['sigma']:g} ({r['legit_eps_per_query']:.4f})"
                     for _, r in close.drop_duplicates(["victim", "knn_set", "sigma"]).iterrows())
                     if len(close) else "in no combination (closest: " + _closest(frame, legit_paper) + ")") + ".")
    near = frame.assign(miss=(np.log(frame["legit_eps_per_query"] / legit_paper).abs()
                              + np.log(frame["ood_eps_per_query"] / copycat_paper).abs())).sort_values("miss").iloc[0]
    lines.append(f"- Nearest to the authors' pair (legitimate {legit_paper:.3f}, copycat {copycat_paper:.3f} per "
                 f"query): victim {near['victim']}, kNN over {near['knn_set']}, pool {near['pool']}, sigma "
                 f"{near['sigma']:g}: {near['legit_eps_per_query']:.3f} and {near['ood_eps_per_query']:.3f} "
                 f"({near['growth']:.2f}x).")
    per_query = paper["growth_per_query"].max()
    equal = paper[paper["mode"] != "standard"].sort_values("growth_equal_accuracy")
    reach = equal[equal["growth_equal_accuracy"] >= PAPER_GROWTH]["mode"].tolist()
    lines.append(f"- The paper's 'up to {PAPER_GROWTH:g}x faster': per query, the authors' CSVs reach at most "
                 f"{per_query:.2f}x ({paper.loc[paper['growth_per_query'].idxmax(), 'mode']}), and per second of "
                 f"querying at most {paper['growth_per_second'].max():.2f}x: not {PAPER_GROWTH:g}x. Only read as the "
                 f"cost of reaching the same stolen accuracy does it reach {PAPER_GROWTH:g}x or more ("
                 + ", ".join(f"{r['mode']} {r['growth_equal_accuracy']:.1f}x at {r['at_accuracy']:.1f}%"
                             for _, r in equal.iterrows() if r["mode"] in reach) + ").")
    return "\n".join(lines) + "\n"


def _closest(frame: pd.DataFrame, target: float) -> str:
    r = frame.loc[(frame["legit_eps_per_query"] - target).abs().idxmin()]
    return (f"{r['victim']} / {r['knn_set']} / sigma {r['sigma']:g}, {r['legit_eps_per_query']:.4f}, "
            f"{r['legit_eps_per_query'] / target - 1:+.0%}")
