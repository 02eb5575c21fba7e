"""Pure, vectorised maths of the Gaussian NoisyMax (GNMax) mechanism, in log space.

References are to Papernot et al., "Scalable Private Learning with PATE", ICLR 2018 (PATE 2018),
and to Balle et al., "Hypothesis Testing Interpretations and Renyi Differential Privacy", AISTATS
2020 (for the improved conversion). Every function is stateless; accountants live in accountants.py.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from common import checks
from common.errors import ConfigError

#: Renyi orders: 2 to 99.5 in steps of 0.5, then 200 log-spaced orders from 100 to 1000. The dense upper
#: part matters: with sigma=28 and delta=1e-6 the best order is near 105, and a gap from 100 to 110 there
#: put epsilon 0.1% too high.
DEFAULT_ORDERS = np.concatenate([np.arange(2.0, 100.0, 0.5), np.logspace(2.0, 3.0, 200)])

CONVERSIONS = ("classic", "improved")
MIN_SIGMA = 1e-3  # GNMax noise below this gives infinite epsilons (1e-320 passed a plain "> 0" check)


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    near = x > -np.log(2.0)
    with np.errstate(divide="ignore"):
        out[near] = np.log(-np.expm1(x[near]))
    out[~near] = np.log1p(-np.exp(x[~near]))
    return out


def log_q_gnmax(votes, *, sigma: float) -> np.ndarray:
    """Log of the upper bound q on Pr[GNMax output != argmax of the votes] (PATE 2018, Prop. 7).

    q = sum over i != i* of Pr[n_i + Z_i >= n_i* + Z_i*] = sum_i (1/2) erfc((n_i* - n_i) / (2 sigma)),
    with Z ~ N(0, sigma^2) per class. Since i* is the most likely output, q is also at most
    1 - 1/C (C classes); the smaller bound is returned. votes: (N, C) or (C,). Returns shape (N,).
    """
    checks.finite("sigma", sigma, lo=MIN_SIGMA, hi=1e6)
    v = np.atleast_2d(np.asarray(votes, dtype=np.float64))
    if v.shape[1] < 2:
        raise ConfigError("a vote histogram needs at least two classes")
    top = v.max(axis=1, keepdims=True)
    # (1/2) erfc(d / (2 sigma)) = Phi(-d / (sigma sqrt 2)), evaluated in log space
    log_terms = log_ndtr(-(top - v) / (sigma * np.sqrt(2.0)))
    winner = v.argmax(axis=1)
    log_terms[np.arange(len(v)), winner] = -np.inf
    peak = log_terms.max(axis=1, keepdims=True)
    logq = (peak + np.log(np.exp(log_terms - peak).sum(axis=1, keepdims=True)))[:, 0]
    return np.minimum(logq, np.log1p(-1.0 / v.shape[1]))


def rdp_data_independent_gnmax(*, sigma: float, orders=DEFAULT_ORDERS) -> np.ndarray:
    """RDP of GNMax at each order lambda: lambda / sigma^2 (PATE 2018, Prop. 8)."""
    return np.asarray(orders, dtype=np.float64) / sigma ** 2


def rdp_data_dependent_gnmax(logq, *, sigma: float, orders=DEFAULT_ORDERS, cap: bool = False) -> np.ndarray:
    """Data-dependent RDP of GNMax for each query and order (PATE 2018, Thm. 6 with Prop. 10's orders).

    For a query with log q, take mu2 = sigma sqrt(log 1/q), mu1 = mu2 + 1, eps_j = mu_j / sigma^2.
    Where mu2 > 1, q <= exp((mu2 - 1) eps2) / (mu1/(mu1-1) * mu2/(mu2-1))^mu2, q e^eps2 < 1 and
    lambda < mu1, the bound is
        1/(lambda-1) log((1-q) A^(lambda-1) + q B^(lambda-1)),
        A = (1-q) / (1 - (e^eps2 q)^((mu2-1)/mu2)),   B = e^eps1 / q^(1/(mu1-1)).
    Elsewhere the data-independent lambda/sigma^2 applies. As in the paper's code, the data-dependent
    value is kept even where it exceeds the data-independent one, unless cap=True takes the minimum.
    Returns an (N, L) array.
    """
    logq = np.atleast_1d(np.asarray(logq, dtype=np.float64))
    lam = np.asarray(orders, dtype=np.float64)[None, :]
    var = sigma ** 2
    independent = np.broadcast_to(lam / var, (len(logq), lam.shape[1])).copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mu2 = np.sqrt(var * -logq)
        mu1 = mu2 + 1.0
        eps1, eps2 = mu1 / var, mu2 / var
        bound = (mu2 - 1.0) * eps2 - mu2 * (np.log(mu1 / (mu1 - 1.0)) + np.log(mu2 / (mu2 - 1.0)))
        ok = np.isfinite(logq) & (mu2 > 1.0) & (logq <= bound) & (-logq > eps2)
        rows = np.flatnonzero(ok)
        if rows.size:
            lq, m1, m2 = logq[rows, None], mu1[rows, None], mu2[rows, None]
            log1q = _log1mexp(lq)
            log_a = log1q - _log1mexp((lq + eps2[rows, None]) * (1.0 - 1.0 / m2))
            log_b = eps1[rows, None] - lq / (m1 - 1.0)
            lm1 = lam - 1.0
            dep = np.logaddexp(log1q + lm1 * log_a, lq + lm1 * log_b) / lm1
            use = lam < m1
            block = independent[rows]
            block[use] = np.broadcast_to(dep, block.shape)[use]
            independent[rows] = block
    # votes so lopsided that q underflows to 0: the mechanism is (numerically) deterministic
    independent[np.isneginf(logq)] = 0.0
    if cap:
        np.minimum(independent, lam / var, out=independent)
    return independent


def rdp_to_eps(rdp, *, orders=DEFAULT_ORDERS, delta: float, conversion: str = "classic"):
    """Convert RDP curves to (epsilon, delta)-DP; returns (eps, best order), each of shape rdp.shape[:-1].

    classic (the paper's): eps = min over lambda of rdp(lambda) + log(1/delta) / (lambda - 1).
    improved (Balle et al. 2020, Thm. 21): eps = min of rdp + log((lambda-1)/lambda)
    - (log delta + log lambda) / (lambda - 1); never larger than classic.
    """
    checks.finite("delta", delta, lo=0, hi=1, lo_open=True, hi_open=True)
    if conversion not in CONVERSIONS:
        raise ConfigError(f"unknown conversion '{conversion}'; valid conversions: {', '.join(CONVERSIONS)}")
    rdp = np.asarray(rdp, dtype=np.float64)
    lam = np.asarray(orders, dtype=np.float64)
    if conversion == "classic":
        eps = rdp + np.log(1.0 / delta) / (lam - 1.0)
    else:
        eps = rdp + np.log((lam - 1.0) / lam) - (np.log(delta) + np.log(lam)) / (lam - 1.0)
    best = eps.argmin(axis=-1)
    return np.take_along_axis(eps, best[..., None], -1)[..., 0], lam[best]


def eps_per_query(votes, *, sigma: float, delta: float, orders=DEFAULT_ORDERS, cap: bool = False,
                  conversion: str = "classic"):
    """Each query's own epsilon and its RDP curve: returns (eps (N,), rdp (N, L))."""
    rdp = rdp_data_dependent_gnmax(log_q_gnmax(votes, sigma=sigma), sigma=sigma, orders=orders, cap=cap)
    eps, _ = rdp_to_eps(rdp, orders=orders, delta=delta, conversion=conversion)
    return eps, rdp
