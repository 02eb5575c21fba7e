"""Calibrate proof-of-work time from a client's cumulative cost against a legitimate baseline.

Two calibrations share one interface, extra_seconds(q_prev, q, cost, time_prev=, time_s=): the PoW
seconds a client pays for the queries between q_prev and q, given its cumulative cost at q and, where
known, the server's cumulative time answering it at q_prev and q.

paper     (Dziedzic et al. 2022) expected(q) is a least-squares line through the baseline's
          (queries, cost); each logged step of STEP_QUERIES queries costs
          clip(base ** |cost - expected(q)|, min_s, max_s) seconds (pro rata for other step sizes).
relative  (this project's default; holds on any hardware and under any load) a client pays `budget`
          times the server's own time answering the priced queries, dt; an excess of cost over the
          legitimate line multiplies it:
              excess(q, c) = max(0, c - slope*q - tolerance * sd_b * sqrt(q/B)) / (slope*B)
              seconds = min(budget * base ** excess, max_factor) * max(dt, MIN_TIME_SHARE * t_b * n)
          for n batches. dt is measured by the answering side, so the client cannot shrink it, and it
          moves with the server's load: a legitimate user pays budget x its own time whether the
          baseline was recorded on a busy or a quiet machine. (Pricing in the baseline's time per batch
          t_b instead made a legitimate user pay 6.5x on a quiet machine against a busy baseline.)
          Without a measured dt (the paper's CSVs, or extra_seconds without times), dt = t_b * n.
          slope is the baseline's cost per query (line through the origin), B the batch size, sd_b
          the standard deviation of one legitimate batch's cost. The excess is counted in legitimate
          batches' worth of cost, so it means the same on every dataset and cost measure, and a
          legitimate user (within `tolerance` standard deviations of the line) pays exactly `budget`
          times their query time: at most (1 + budget)x in time. With --deficit_tolerance T the rule
          is two-sided: a cost below the line by more than T standard deviations counts as excess too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import checks
from common.errors import UserError, unknown_name
from common.io import read_csv_file
from privacy.accountants import COST_COLUMNS, cost_column

MIN_TIME_SHARE = 0.1  # relative: dt is never taken below this share of the baseline's time for the same batches
MAX_QUERIES = 1e15  # a query count above this is not a count
STEP_QUERIES = 1000  # paper: one logged step = 16 batches of 64, counted as 1,000 queries
PAPER_COLUMNS = ("time", "privacy", "queries")  # the paper's legitimate-user CSV format
CALIBRATIONS = ("paper", "relative")
# the defaults, here once (the calibrators, CalibrationConfig and so the flags read them)
PAPER_BASE, RELATIVE_BASE = 1.0075, 1.05  # the paper's base; the relative one's, per legitimate batch of excess
PAPER_MIN_S, PAPER_MAX_S = 0.1, 2948.467908  # the paper's clip, seconds per 1,000 queries
TOLERANCE, MAX_FACTOR = 3.0, 1000.0  # relative: free band in baseline sd; the cap on the PoW factor


@dataclass(frozen=True)
class Baseline:
    """A legitimate user's cumulative (queries, cost, query time), sorted by queries."""
    queries: np.ndarray
    cost: np.ndarray
    time_s: np.ndarray
    source: str
    column: str


def read_cost_log(path, *, cost_measure: str) -> pd.DataFrame:
    """Read a run log (log.csv) or a paper time,privacy,queries CSV into queries / cost / query_time_s.

    Any other layout is a UserError that names the columns expected.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a run's log.csv or a paper-format CSV")
    frame = read_csv_file(path, "cost log")
    column = cost_column(cost_measure)
    if set(PAPER_COLUMNS) <= set(frame.columns):
        out = pd.DataFrame({"queries": frame["queries"], "cost": frame["privacy"], "query_time_s": frame["time"]})
        column = "privacy"
    elif {"queries", "query_time_s", column} <= set(frame.columns):
        out = pd.DataFrame({"queries": frame["queries"], "cost": frame[column],
                            "query_time_s": frame["query_time_s"]})
    else:
        raise UserError(f"{path} has columns {list(frame.columns)}; expected a run log with queries, "
                        f"query_time_s and {column} (one of {', '.join(COST_COLUMNS)} per --cost_measure), "
                        f"or the paper's {','.join(PAPER_COLUMNS)}")
    if any(out[c].dtype == bool or out[c].map(lambda v: isinstance(v, bool)).any() for c in out.columns):
        raise UserError(f"{path} has true/false values in queries, time or cost; they must be numbers")
    out = out.apply(pd.to_numeric, errors="coerce")
    if out.empty:
        raise UserError(f"{path} has a header but no rows; it needs at least one row of queries, time and cost")
    bad = [{"cost": column, "query_time_s": "query_time_s" if column != "privacy" else "time"}.get(c, c)
           for c in out.columns if out[c].isna().any() or not np.isfinite(out[c].to_numpy(dtype=float)).all()]
    if bad:
        raise UserError(f"{path} has empty, non-numeric or infinite values in {', '.join(bad)}; a run logs "
                        f"{column} only under its cost measure: rerun it with --cost_measure {cost_measure}, "
                        f"or choose the measure its log has")
    q = out["queries"].to_numpy(float)
    if (q != np.floor(q)).any() or (q > MAX_QUERIES).any():
        raise UserError(f"{path}: queries must be whole numbers of at most {MAX_QUERIES:.0e}")
    if (q < 0).any() or (np.diff(q) <= 0).any():
        raise UserError(f"{path}: queries must be non-negative and strictly increasing from row to row "
                        f"(cumulative counts, one row per logged round)")
    if (out["cost"] < 0).any() or (out["query_time_s"] < 0).any():
        raise UserError(f"{path}: cost and time must be non-negative (cumulative totals)")
    out.attrs["column"] = column
    return out


def load_baseline(path, *, cost_measure: str) -> Baseline:
    frame = read_cost_log(path, cost_measure=cost_measure)
    frame = frame[frame["queries"] > 0]
    if len(frame) < 1:
        raise UserError(f"baseline {path} has no rows with queries > 0; it cannot calibrate")
    if not frame["query_time_s"].iloc[-1] > 0:
        raise UserError(f"baseline {path} ends with a query time of 0 s; a legitimate user's time must be "
                        f"positive to calibrate against")
    return Baseline(frame["queries"].to_numpy(float), frame["cost"].to_numpy(float),
                    frame["query_time_s"].to_numpy(float), str(path), frame.attrs["column"])


def _finite_fit(baseline: Baseline, **values) -> None:
    """The fitted line of a baseline must be finite: huge values (1e308) overflow to inf or NaN."""
    bad = [name for name, v in values.items() if not np.isfinite(v)]
    if bad:
        raise UserError(f"baseline {baseline.source} gives a non-finite {', '.join(bad)}: its queries, costs or "
                        f"times are too large to calibrate with; check the file")


class PaperCalibrator:
    """The paper's calibration: base ** |cost - expected| seconds per 1,000 queries, clipped."""
    name = "paper"

    def __init__(self, baseline: Baseline, *, base: float = PAPER_BASE, min_s: float = PAPER_MIN_S,
                 max_s: float = PAPER_MAX_S, one_sided: bool = False):
        base = checks.finite("base", base, lo=1, lo_open=True)
        min_s = checks.finite("min_s", min_s, lo=0, lo_open=True)
        max_s = checks.finite("max_s", max_s, lo=min_s)
        self.base, self.min_s, self.max_s, self.one_sided = base, min_s, max_s, one_sided
        if len(baseline.queries) >= 2:
            self.slope, self.intercept = np.polyfit(baseline.queries, baseline.cost, 1)
        else:
            self.slope, self.intercept = baseline.cost[0] / baseline.queries[0], 0.0
        _finite_fit(baseline, slope=self.slope, intercept=self.intercept)

    def expected(self, queries):
        return self.slope * np.asarray(queries, float) + self.intercept

    def deviation(self, queries, cost):
        """|cost - expected| (the paper), or max(0, cost - expected) when one-sided."""
        dev = np.asarray(cost, float) - self.expected(queries)
        return np.maximum(dev, 0.0) if self.one_sided else np.abs(dev)

    def step_seconds(self, queries, cost):
        """Extra seconds for one 1,000-query step ending at (queries, cost); computed in log space, so a
        deviation that would overflow base ** dev (DFME's) lands on max_s instead of inf."""
        log_s = self.deviation(queries, cost) * math.log(self.base)
        return np.exp(np.clip(log_s, math.log(self.min_s), math.log(self.max_s)))

    def extra_seconds(self, q_prev, queries, cost, *, time_prev=None, time_s=None):
        """Seconds for the queries q_prev..queries (the paper's absolute seconds: times are not used)."""
        return self.step_seconds(queries, cost) * (np.asarray(queries, float) - q_prev) / STEP_QUERIES

    def next_seconds(self, queries, cost, *, batch: int, answer_s=None) -> float:
        """Seconds for a client's next `batch` queries, priced at its cumulative (queries, cost) so far."""
        return float(self.step_seconds(queries, cost)) * batch / STEP_QUERIES

    def describe(self) -> dict:
        return {"calibration_mode": self.name, "base": self.base, "min_s": self.min_s, "max_s": self.max_s,
                "one_sided": self.one_sided, "slope": float(self.slope), "intercept": float(self.intercept)}


class RelativeCalibrator:
    """PoW as a share of the legitimate query time, growing exponentially with the excess cost."""
    name = "relative"

    def __init__(self, baseline: Baseline, *, base: float = RELATIVE_BASE, budget: float = 1.0,
                 tolerance: float = TOLERANCE, max_factor: float = MAX_FACTOR, batch_size: int = 64,
                 deficit_tolerance: float | None = None):
        base = checks.finite("base", base, lo=1, lo_open=True)
        if deficit_tolerance is not None:
            deficit_tolerance = checks.finite("deficit_tolerance", deficit_tolerance, lo=0)
        self.deficit_tolerance = deficit_tolerance
        budget = checks.finite("pow_budget", budget, lo=0, lo_open=True)
        tolerance = checks.finite("tolerance", tolerance, lo=0)
        max_factor = checks.finite("max_factor (at least pow_budget)", max_factor, lo=budget)
        batch_size = checks.whole("query batch", batch_size, lo=1)
        self.base, self.budget, self.tolerance, self.max_factor = base, budget, tolerance, max_factor
        self.batch_size = batch_size
        q, c = baseline.queries, baseline.cost
        with np.errstate(over="ignore", invalid="ignore"):
            self.slope = float((q * c).sum() / (q * q).sum())
        if self.slope <= 0:
            raise UserError(f"baseline {baseline.source} has no positive cost per query; it cannot calibrate")
        self.unit = self.slope * batch_size  # a legitimate batch's expected cost
        self.batch_time_s = float(baseline.time_s[-1] / q[-1] * batch_size)  # legitimate seconds per batch
        dq = np.diff(np.concatenate([[0.0], q]))
        dc = np.diff(np.concatenate([[0.0], c]))
        batches = dq / batch_size
        with np.errstate(over="ignore", invalid="ignore"):
            self.batch_sd = float(np.sqrt(np.mean((dc - self.slope * dq) ** 2 / batches)))
        _finite_fit(baseline, slope=self.slope, unit=self.unit, batch_sd=self.batch_sd,
                    batch_time_s=self.batch_time_s)
        if not self.batch_time_s > 0:
            raise UserError(f"baseline {baseline.source} has no positive query time; it cannot calibrate")

    def expected(self, queries):
        return self.slope * np.asarray(queries, float)

    def excess(self, queries, cost):
        """Cost outside the legitimate band, in legitimate batches' worth of cost (0 inside the band).

        One-sided (deficit_tolerance None, the default): only cost above the line's upper band counts.
        Two-sided: cost below the line by more than deficit_tolerance standard deviations counts too,
        as the paper's |cost - expected| does (an attacker whose queries are cheaper than a legitimate
        user's, such as jacobian's or entropyrev's, pays for the gap)."""
        q = np.asarray(queries, float)
        spread = self.batch_sd * np.sqrt(q / self.batch_size)
        gap = np.asarray(cost, float) - self.expected(q)
        out = np.maximum(0.0, gap - self.tolerance * spread)
        if self.deficit_tolerance is not None:
            out = out + np.maximum(0.0, -gap - self.deficit_tolerance * spread)
        return out / self.unit

    def batch_seconds(self, queries, cost):
        """PoW seconds for one batch answered at (queries, cost)."""
        log_s = math.log(self.budget * self.batch_time_s) + self.excess(queries, cost) * math.log(self.base)
        return np.exp(np.minimum(log_s, math.log(self.max_factor * self.batch_time_s)))

    def multiplier(self, queries, cost):
        """PoW time as a multiple of the answering time: budget * base ** excess, at most max_factor."""
        log_m = math.log(self.budget) + self.excess(queries, cost) * math.log(self.base)
        return np.exp(np.minimum(log_m, math.log(self.max_factor)))

    def extra_seconds(self, q_prev, queries, cost, *, time_prev=None, time_s=None):
        """Seconds for the queries q_prev..queries, priced in the server's own answering time for them."""
        q = np.asarray(queries, float)
        batches = (q - np.asarray(q_prev, float)) / self.batch_size
        floor = MIN_TIME_SHARE * self.batch_time_s * batches
        if time_s is None:
            answered = self.batch_time_s * batches
        else:
            dt = np.asarray(time_s, float) - np.asarray(0.0 if time_prev is None else time_prev, float)
            answered = np.maximum(dt, floor)
        return self.multiplier(q, cost) * answered

    def next_seconds(self, queries, cost, *, batch: int, answer_s=None) -> float:
        """Seconds for a client's next `batch` queries, priced at its cumulative (queries, cost) so far:
        the multiplier there times the server's own answering time for `batch` queries (answer_s, the
        client's mean so far; the baseline's when None), never below MIN_TIME_SHARE of the baseline's."""
        scale = batch / self.batch_size
        answered = self.batch_time_s * scale if answer_s is None else max(
            checks.finite("answering time", answer_s, lo=0), MIN_TIME_SHARE * self.batch_time_s * scale)
        return float(self.multiplier(queries, cost)) * answered

    def describe(self) -> dict:
        return {"calibration_mode": self.name, "base": self.base, "budget": self.budget,
                "tolerance": self.tolerance, "deficit_tolerance": self.deficit_tolerance,
                "rule": "one-sided" if self.deficit_tolerance is None else "two-sided",
                "max_factor": self.max_factor, "slope": self.slope,
                "unit": self.unit, "batch_sd": self.batch_sd, "batch_time_s": self.batch_time_s}


@dataclass(frozen=True)
class CalibrationConfig:
    """The calibration's own settings (the flags of the same names; their defaults are these)."""
    calibration_mode: str = "relative"
    base: float = RELATIVE_BASE
    pow_budget: float = 1.0
    tolerance: float = TOLERANCE
    max_factor: float = MAX_FACTOR
    query_batch: int = 64
    min_s: float = PAPER_MIN_S
    max_s: float = PAPER_MAX_S
    one_sided: bool = False
    deficit_tolerance: float | None = None  # relative: None is one-sided; T prices deficits beyond T sd

    @staticmethod
    def default_base(calibration_mode: str) -> float:
        """--base when none is given: the paper's 1.0075 for its calibration, else the relative one's 1.05."""
        return PAPER_BASE if calibration_mode == "paper" else RELATIVE_BASE

    @classmethod
    def of(cls, values: dict) -> "CalibrationConfig":
        """The fields of this config taken from a larger mapping (the command's settings)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def create(config: CalibrationConfig, baseline: Baseline) -> PaperCalibrator | RelativeCalibrator:
    """Build the calibrator named by config.calibration_mode."""
    if config.calibration_mode == "paper":
        return PaperCalibrator(baseline, base=config.base, min_s=config.min_s, max_s=config.max_s,
                               one_sided=bool(config.one_sided))
    if config.calibration_mode == "relative":
        return RelativeCalibrator(baseline, base=config.base, budget=config.pow_budget,
                                  tolerance=config.tolerance, max_factor=config.max_factor,
                                  batch_size=config.query_batch, deficit_tolerance=config.deficit_tolerance)
    raise unknown_name("calibration mode", config.calibration_mode, CALIBRATIONS)


def add_pow_columns(frame: pd.DataFrame, calibrator, *, cost: str) -> pd.DataFrame:
    """Return a copy of a log with pow_time_s (cumulative) and total_time_s filled from `cost`."""
    out = frame.copy()
    q = out["queries"].to_numpy(float)
    q_prev = np.concatenate([[0.0], q[:-1]])
    t = out["query_time_s"].to_numpy(float)
    t_prev = np.concatenate([[0.0], t[:-1]])
    extra = np.where(q > q_prev, calibrator.extra_seconds(q_prev, q, out[cost].to_numpy(float), time_prev=t_prev,
                                                          time_s=t), 0.0)
    out["pow_time_s"] = np.cumsum(extra)
    out["total_time_s"] = out["query_time_s"] + out["pow_time_s"]
    return out


def ratio(frame: pd.DataFrame) -> float:
    """Time with PoW over time without, at the log's last row."""
    last = frame.iloc[-1]
    return float(last["total_time_s"] / last["query_time_s"]) if last["query_time_s"] > 0 else float("nan")


# -- the split-proof price: each query's own cost, times the account's cumulative factor ----------------
SMOOTHING_POINTS = 32  # normal quantiles per legitimate sample when the legitimate tail is smoothed


@dataclass(frozen=True)
class QueryPriceConfig:
    """How each query's own cost is priced (the flags of the same names).

    query_quantile  the legitimate per-query cost above which a query's weight starts to grow;
    query_share     the share of a legitimate user's PoW that its costliest queries (above that
                    quantile) carry; the rest is spread evenly over every query;
    query_smoothing the legitimate costs are smoothed with a normal kernel of this many Silverman
                    bandwidths before the weights are fitted, so that a few hundred legitimate samples
                    do not understate the legitimate tail (0: no smoothing);
    account_factor  the most the account's cumulative excess can multiply a batch's per-query price:
                    splitting over keys can lower what a client pays by at most this factor."""
    query_quantile: float = 0.9
    query_share: float = 0.5
    query_smoothing: float = 4.0
    account_factor: float = 2.0

    @classmethod
    def of(cls, values: dict) -> "QueryPriceConfig":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    def checked(self) -> "QueryPriceConfig":
        checks.finite("--query_quantile", self.query_quantile, lo=0, hi=1, hi_open=True)
        checks.finite("--query_share", self.query_share, lo=0, hi=1, hi_open=True)
        checks.finite("--query_smoothing", self.query_smoothing, lo=0, hi=100)
        checks.finite("--account_factor", self.account_factor, lo=1, hi=1e6)
        return self


class QueryWeights:
    """w(c) = min(max_weight, w0 * exp(kappa * max(0, c - tau))): each query's own weight from its own cost.

    tau is the legitimate costs' `query_quantile`; w0 = 1 - query_share; kappa is the steepest growth
    for which the legitimate (smoothed) costs still weigh 1 on average. A legitimate user therefore pays
    its calibrated budget on average, while a query whose cost lies beyond the legitimate tail weighs up
    to max_weight on its own, whatever account sent it and in whatever batch."""

    def __init__(self, legit_costs, *, max_weight: float, config: QueryPriceConfig = QueryPriceConfig()):
        config = config.checked()
        costs = np.asarray(legit_costs, dtype=np.float64).ravel()
        if len(costs) < 10 or not np.isfinite(costs).all() or (costs < 0).any():
            raise UserError(f"the legitimate per-query costs must be at least 10 finite, non-negative numbers "
                            f"(got {len(costs)}); the server measures them on the dataset's held-out images")
        self.max_weight = checks.finite("the largest query weight", max_weight, lo=1)
        self.config = config
        self.tau = float(np.quantile(costs, config.query_quantile))
        self.w0 = 1.0 - config.query_share
        h = config.query_smoothing * 1.06 * float(costs.std()) * len(costs) ** -0.2
        from scipy.stats import norm  # scipy is a requirement already (the RDP bounds)
        z = norm.ppf((np.arange(SMOOTHING_POINTS) + 0.5) / SMOOTHING_POINTS)
        smoothed = (costs[:, None] + h * z[None, :]).ravel() if h > 0 else costs
        lo, hi = 0.0, 1.0
        while self._mean(smoothed, hi) < 1.0 and hi < 1e6:  # the steepest kappa the legitimate tail allows
            lo, hi = hi, hi * 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self._mean(smoothed, mid) > 1.0 else (mid, hi)
        self.kappa = lo
        self.legit_mean = float(self(costs).mean())
        self.bandwidth = h
        _finite = [v for v in (self.tau, self.kappa, self.legit_mean) if not math.isfinite(v)]
        if _finite:
            raise UserError("the per-query weights could not be fitted to the legitimate costs (non-finite)")

    def _weights(self, costs, kappa):
        log_w = math.log(self.w0) + kappa * np.maximum(np.asarray(costs, np.float64) - self.tau, 0.0)
        return np.exp(np.minimum(log_w, math.log(self.max_weight)))

    def _mean(self, costs, kappa) -> float:
        return float(self._weights(costs, kappa).mean())

    def __call__(self, costs) -> np.ndarray:
        costs = np.asarray(costs, dtype=np.float64)
        if not np.isfinite(costs).all():  # a NaN must never price a query at the floor
            raise ValueError("a per-query cost is not finite; refusing to price it")
        return self._weights(costs, self.kappa)

    def describe(self) -> dict:
        return {"tau": self.tau, "w0": self.w0, "kappa": self.kappa, "max_weight": self.max_weight,
                "bandwidth": self.bandwidth, "legit_mean_weight": self.legit_mean, **vars(self.config)}


class SplitProofPricer:
    """Seconds of PoW for one batch, priced after the server has seen it:

        seconds = t_q * sum_i min(max_factor, budget * w(c_i) * F),
        F = 1 (anonymous), else min(account_factor, base ** excess(queries, cost))

    where c_i is each query's own cost, w the QueryWeights, t_q the server's typical answering time per
    query for batches of this size (the baseline's before it has answered any; never below MIN_TIME_SHARE
    of the baseline's), and excess the relative calibration's
    excess of the account's cumulative cost *including this batch*. The per-query part is a plain sum
    over queries, so no split over keys or batches changes it; the account factor F >= 1 can only add,
    and adds at most account_factor times. Hence any split of a query stream pays at least
    1 / account_factor of what one key pays for it, in one batch or many."""

    def __init__(self, calibrator: RelativeCalibrator, weights: QueryWeights, *, account_factor: float,
                 anonymous: bool = False):
        if not isinstance(calibrator, RelativeCalibrator):
            raise UserError("the server prices each batch after it has seen it with --calibration_mode relative "
                            "(the paper's mode prices 1,000-query steps); pass --calibration_mode relative")
        self.calibrator, self.weights, self.anonymous = calibrator, weights, bool(anonymous)
        self.account_factor = checks.finite("--account_factor", account_factor, lo=1)
        self.query_time_s = calibrator.batch_time_s / calibrator.batch_size  # the baseline's, per query

    def factor(self, queries, cost) -> float:
        """The account's cumulative factor F at (queries, cost), the batch being priced included."""
        if self.anonymous or queries <= 0:
            return 1.0
        c = self.calibrator
        log_f = float(c.excess(queries, cost)) * math.log(c.base)
        return float(math.exp(min(log_f, math.log(self.account_factor))))

    def per_query_time(self, answer_s: float | None, n: int) -> float:
        floor = MIN_TIME_SHARE * self.query_time_s
        if answer_s is None:
            return self.query_time_s
        return max(checks.finite("answering time", answer_s, lo=0) / max(n, 1), floor)

    def seconds(self, costs, *, queries, cost, answer_s: float | None) -> float:
        """PoW seconds for a batch with per-query `costs`, the account at (queries, cost) after it."""
        return self.price(costs, queries=queries, cost=cost, answer_s=answer_s)[0]

    def price(self, costs, *, queries, cost, answer_s: float | None) -> tuple:
        """(seconds, the batch's summed query weights): seconds() and what an account records of it."""
        costs = np.asarray(costs, dtype=np.float64).ravel()
        c = self.calibrator
        weights = self.weights(costs)
        per = np.minimum(c.max_factor, c.budget * weights * self.factor(queries, cost))
        seconds = float(per.sum()) * self.per_query_time(answer_s, len(costs))
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a batch was priced at {seconds} s; refusing to answer it")
        return seconds, float(weights.sum())

    def expected_seconds(self, n: int, *, queries, cost, answer_s: float | None, weight: float = 1.0) -> float:
        """What n more queries are expected to cost before the server has seen them: `weight` per query
        (1 is a legitimate query's mean; an account's own mean weight so far predicts it better)."""
        c = self.calibrator
        f = self.factor(queries, cost)
        per = min(c.max_factor, c.budget * checks.finite("query weight", weight, lo=0) * f)
        return per * n * self.per_query_time(answer_s, n)

    def describe(self) -> dict:
        return {**self.calibrator.describe(), "account_factor": self.account_factor, "anonymous": self.anonymous,
                "query_weights": self.weights.describe()}
