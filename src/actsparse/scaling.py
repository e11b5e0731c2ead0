"""Q-Sparse's inference-optimal scaling law: fit, optimum and confidence intervals.

    L(N, S) = E + (B + C exp(beta / (1 - S))) N^(-alpha)

`N` is the number of parameters the sparsity acts on, `S` the sparsity of their inputs.
With `N_a = (1 - S) N` active parameters, `L = E + N_a^(-alpha) (B + C exp(beta/(1-S)))
(1 - S)^alpha`: the optimal sparsity `S*` does not depend on the budget `N_a`, and
(derivative in `u = 1 - S`, then `v = beta / u`: `(v - alpha) e^v = alpha B / C`)

    S* = 1 - beta / (alpha + W0((alpha B / C) exp(-alpha)))      (0 if that is <= 0).

The fit minimises a robust loss (`soft_l1`) of log-space residuals `log L_fit - log L`
with `scipy.optimize.least_squares` from several starts; intervals come from a residual
bootstrap (log-space residuals of the best fit, resampled with replacement, refitted).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger("actsparse.scaling")

PARAMS = ("E", "B", "C", "beta", "alpha")


@dataclass(frozen=True)
class Law:
    E: float
    B: float
    C: float
    beta: float
    alpha: float

    def loss(self, n: np.ndarray | float, s: np.ndarray | float) -> np.ndarray:
        n, s = np.asarray(n, dtype=float), np.asarray(s, dtype=float)
        return self.E + (self.B + self.C * np.exp(self.beta / (1 - s))) * n ** (-self.alpha)

    def loss_at_active(self, n_active: np.ndarray | float, s: np.ndarray | float) -> np.ndarray:
        """The loss of the model with `n_active = (1 - S) N` active parameters at sparsity S."""
        s = np.asarray(s, dtype=float)
        return self.loss(np.asarray(n_active, dtype=float) / (1 - s), s)

    def log_cost(self, s: np.ndarray | float) -> np.ndarray:
        """log of `A(S) (1 - S)^alpha`: what S* minimises (no overflow near S = 1)."""
        u = 1 - np.asarray(s, dtype=float)
        log_a = np.logaddexp(
            np.log(self.B) if self.B > 0 else -np.inf, np.log(self.C) + self.beta / u
        )
        return log_a + self.alpha * np.log(u)

    def s_star(self) -> float:
        """The closed form with the principal Lambert W branch; 0 where dense is optimal."""
        from scipy.special import lambertw

        if not (self.C > 0 and self.beta > 0 and self.alpha > 0 and self.B >= 0):
            raise ValueError(f"S* needs C, beta, alpha > 0 and B >= 0; got {self}")
        w = float(lambertw(self.alpha * self.B / self.C * math.exp(-self.alpha)).real)
        return max(0.0, 1.0 - self.beta / (self.alpha + w))

    def s_star_numeric(self, grid: int = 4001) -> float:
        """S* by direct minimisation: the best of a fine grid on [0, 1), refined by bounded
        Brent search between its neighbours (an independent check of the closed form)."""
        from scipy.optimize import minimize_scalar

        s = np.linspace(0.0, 1.0, grid, endpoint=False)
        i = int(np.argmin(self.log_cost(s)))
        lo, hi = s[max(i - 1, 0)], s[min(i + 1, grid - 1)]
        if i == 0 and self.log_cost(0.0) <= self.log_cost(s[1]):
            lo = 0.0
        res = minimize_scalar(
            lambda x: float(self.log_cost(x)), bounds=(lo, hi), method="bounded",
            options={"xatol": 1e-10},
        )  # fmt: skip
        best = float(res.x)
        return 0.0 if self.log_cost(0.0) <= self.log_cost(best) else best

    def total_over_active(self) -> float:
        """N / N_a at the optimum: `1 / (1 - S*)`."""
        return 1.0 / (1.0 - self.s_star())

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Fit:
    law: Law
    converged: bool
    message: str
    cost: float  # the robust loss at the optimum
    rmse_log: float  # root mean square log-space residual
    n_points: int
    starts: int
    ran_out: bool = False  # the best start stopped on its evaluation budget


def check_points(n: np.ndarray, s: np.ndarray, loss: np.ndarray) -> None:
    """Refuse what cannot identify the five constants, naming what is missing."""
    if not len(n) == len(s) == len(loss):
        raise ValueError(f"N, S and L differ in length: {len(n)}, {len(s)}, {len(loss)}")
    if len(n) < len(PARAMS):
        raise ValueError(
            f"the scaling law has {len(PARAMS)} constants ({', '.join(PARAMS)}); a fit needs "
            f"at least as many points, got {len(n)}"
        )
    for name, v in (("N", n), ("L", loss)):
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"every {name} must be finite and > 0; got {v.tolist()}")
    if not (np.isfinite(s).all() and ((s >= 0) & (s < 1)).all()):
        raise ValueError(f"every sparsity S must be in [0, 1); got {s.tolist()}")
    if len(np.unique(n)) < 2:
        raise ValueError("the fit needs at least 2 model sizes N (alpha is not identifiable)")
    if len(np.unique(s)) < 3:
        raise ValueError(
            "the fit needs at least 3 sparsity levels S (B, C and beta are not identifiable)"
        )


def _unpack(theta: np.ndarray) -> Law:
    e, log_b, log_c, beta, alpha = theta
    return Law(float(e), float(np.exp(log_b)), float(np.exp(log_c)), float(beta), float(alpha))


def _residuals(theta: np.ndarray, n: np.ndarray, s: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    e, log_b, log_c, beta, alpha = theta
    # log of (B + C exp(beta/(1-S))) N^-alpha, without overflow
    log_a = np.logaddexp(log_b, log_c + beta / (1 - s)) - alpha * np.log(n)
    return np.log(e + np.exp(log_a)) - log_l


def _bounds(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([0.0, -30.0, -30.0, 1e-4, 1e-3])
    hi = np.array([float(loss.min()) * (1 - 1e-6), 30.0, 30.0, 10.0, 2.0])
    return lo, hi


def _start(n, s, loss, e, beta, alpha) -> np.ndarray:
    """(B, C) by non-negative least squares given (E, beta, alpha): the law is linear in them."""
    from scipy.optimize import nnls

    scale = n ** (-alpha)
    design = np.column_stack([scale, np.exp(beta / (1 - s)) * scale])
    (b, c), _ = nnls(design / loss[:, None], (loss - e) / loss)
    return np.array([e, np.log(max(b, 1e-12)), np.log(max(c, 1e-12)), beta, alpha])


def fit_law(
    n: np.ndarray,
    s: np.ndarray,
    loss: np.ndarray,
    starts: int = 16,
    robust: str = "soft_l1",
    f_scale: float = 0.01,
    seed: int = 0,
    max_nfev: int = 2000,
    init: np.ndarray | None = None,
) -> Fit:
    """Fit the five constants to points (N, S, L); the best of `starts` starts (plus `init`).

    `converged` is False (and a warning is logged) when the best start stopped on its
    evaluation budget or pinned alpha, beta or C at a bound of the search box.
    """
    from scipy.optimize import least_squares

    n, s, loss = (np.asarray(v, dtype=float) for v in (n, s, loss))
    check_points(n, s, loss)
    lo, hi = _bounds(loss)
    rng = np.random.default_rng(seed)
    inits = [] if init is None else [np.clip(init, lo, hi)]
    for _ in range(starts):
        e = rng.uniform(0.0, 0.95) * loss.min()
        inits.append(_start(n, s, loss, e, rng.uniform(0.02, 1.5), rng.uniform(0.05, 0.8)))
    best = None
    for x0 in inits:
        x0 = np.clip(x0, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        res = least_squares(
            _residuals, x0, bounds=(lo, hi), loss=robust, f_scale=f_scale,
            args=(n, s, np.log(loss)), max_nfev=max_nfev, x_scale="jac",
        )  # fmt: skip
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    at_bound = [
        PARAMS[i]
        for i in (2, 3, 4)  # C, beta, alpha (E -> 0 and B -> 0 are legitimate limits)
        if np.isclose(best.x[i], lo[i], rtol=0, atol=1e-6 * (hi[i] - lo[i]))
        or np.isclose(best.x[i], hi[i], rtol=0, atol=1e-6 * (hi[i] - lo[i]))
    ]
    converged = bool(best.status > 0 and not at_bound and np.isfinite(best.cost))
    message = best.message if not at_bound else f"{', '.join(at_bound)} at a bound of the search"
    if not converged:
        log.warning("scaling-law fit did not converge: %s", message)
    r = _residuals(best.x, n, s, np.log(loss))
    return Fit(
        _unpack(best.x),
        converged,
        message,
        float(best.cost),
        float(np.sqrt(np.mean(r**2))),
        len(n),
        len(inits),
        ran_out=bool(best.status <= 0),
    )


def theta_of(law: Law) -> np.ndarray:
    return np.array(
        [law.E, np.log(max(law.B, 1e-12)), np.log(law.C), law.beta, law.alpha], dtype=float
    )


def bootstrap(
    n: np.ndarray,
    s: np.ndarray,
    loss: np.ndarray,
    fit: Fit,
    samples: int = 200,
    starts: int = 2,
    seed: int = 0,
    **fit_kwargs,
) -> dict[str, np.ndarray]:
    """Residual bootstrap: resample the best fit's log-space residuals (centred, inflated by
    sqrt(n / (n - 5))), refit (from the best fit and `starts` random starts). Returns each
    constant's, S*'s and N/N_a's samples. Refits that ran out of evaluations are dropped
    (counted under `failed`); refits pinned at a bound of the search are kept."""
    n, s, loss = (np.asarray(v, dtype=float) for v in (n, s, loss))
    log_fit = np.log(fit.law.loss(n, s))
    resid = np.log(loss) - log_fit
    # fitted residuals are smaller than the noise (5 constants absorb some): inflate them
    resid = (resid - resid.mean()) * np.sqrt(len(resid) / max(len(resid) - len(PARAMS), 1))
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {k: [] for k in (*PARAMS, "S_star", "N_over_Na")}
    failed = 0
    for b in range(samples):
        boot = np.exp(log_fit + rng.choice(resid, size=len(resid), replace=True))
        f = fit_law(n, s, boot, starts=starts, seed=seed + 1 + b, init=theta_of(fit.law),
                    **fit_kwargs)  # fmt: skip
        if f.ran_out or not np.isfinite(f.cost):  # a refit pinned at a bound is a sample
            failed += 1  # of the bounded model, kept; one that did not finish is not
            continue
        for k, v in f.law.as_dict().items():
            out[k].append(v)
        out["S_star"].append(f.law.s_star())
        out["N_over_Na"].append(f.law.total_over_active())
    result = {k: np.asarray(v) for k, v in out.items()}
    result["failed"] = np.asarray([failed])
    return result


def interval(samples: np.ndarray, level: float = 0.9) -> tuple[float, float]:
    """The central `level` percentile interval (nan if no sample)."""
    if len(samples) == 0:
        return math.nan, math.nan
    q = (1 - level) / 2
    lo, hi = np.quantile(samples, [q, 1 - q])
    return float(lo), float(hi)
