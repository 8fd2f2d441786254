"""Scaling-law fits of a ladder (train/ablate/ladder.py): each variant's test loss against its training compute.

Per variant, the test loss at rung k (mean over seeds) against the rung's training compute C_k in FLOPs (the
runner's `count_flops` per token, 6 N plus each mixer's declared attention / scan term, times the training tokens)
is fit by least squares to the saturating power law of Kaplan et al. 2020 (eq. 1.3, a power law in compute) with
the irreducible term E of Hoffmann et al. 2022 (eq. 2):

    L(C) = E + A C^(-alpha),      fit in x = ln(C / C_max):  L = E + a exp(-alpha x),  A = a C_max^alpha

with bounds 0 <= E <= min_k L_k, a >= 0, ALPHA_LOW <= alpha <= ALPHA_HIGH. For each alpha on a grid the best
(E, a) is a linear least-squares problem; the best grid point starts `scipy.optimize.curve_fit` (trust region
reflective, inside the bounds), which gives the point fit. A fit with a parameter at a bound, or from fewer
than MIN_RUNGS rungs (3 points determine 3 parameters exactly: nothing is left to test the form), is flagged.

Uncertainty: a bootstrap over seeds. A replicate draws the seeds with replacement (the same draw for every
variant, so the pairing by seed is kept), averages each rung over the drawn seeds and is fit on the alpha grid
(vectorised over replicates). From the replicates: 95% percentile intervals for alpha, for the extrapolated
loss at 10x and 100x the largest rung's compute, and for the compute where a variant's fit crosses the
reference's (the first sign change of L_variant - L_ref on a log grid from the smallest rung to 100x the largest;
"no crossing within 100x" when the point fits do not cross there). Extrapolation beyond the measured rungs
assumes the form holds there: it is a guess, and the report says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

ALPHA_LOW, ALPHA_HIGH = 0.01, 2.0
ALPHA_GRID = np.linspace(ALPHA_LOW, ALPHA_HIGH, 800)
MIN_RUNGS = 4  # fewer: the fit is reported but flagged as meaning nothing
REACH = 100.0  # extrapolation and crossing search up to REACH x the largest rung's compute
EXTRAPOLATE = (10.0, 100.0)


@dataclass
class Fit:
    E: float
    a: float  # the amplitude at C_max: L(C_max) = E + a
    alpha: float
    c_max: float
    at_bounds: tuple[str, ...] = ()  # names of the parameters at a bound

    @property
    def A(self) -> float:
        return self.a * self.c_max ** self.alpha

    def __call__(self, compute) -> np.ndarray:
        return self.E + self.a * np.exp(-self.alpha * np.log(np.asarray(compute, dtype=float) / self.c_max))


def grid_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The least-squares (E, a, alpha) of y (B, R) against x (R,) for every row, alpha on ALPHA_GRID (E and a
    exact for each alpha); NaN for a row where no decreasing curve within the bounds exists."""
    z = np.exp(-ALPHA_GRID[:, None] * x[None, :])  # (G, R)
    zc = z - z.mean(1, keepdims=True)
    a = (y - y.mean(1, keepdims=True)) @ zc.T / (zc ** 2).sum(1)  # (B, G)
    e = y.mean(1, keepdims=True) - a * z.mean(1)
    sse = ((y[:, None, :] - e[..., None] - a[..., None] * z[None]) ** 2).sum(-1)
    sse[(a < 0) | (e < 0) | (e > y.min(1, keepdims=True))] = np.inf
    best = sse.argmin(1)
    rows = np.arange(len(y))
    ok = np.isfinite(sse[rows, best])
    pick = lambda v: np.where(ok, v, np.nan)  # noqa: E731
    return pick(e[rows, best]), pick(a[rows, best]), pick(ALPHA_GRID[best])


def fit(compute, loss) -> Fit:
    """The point fit of loss (R,) against compute (R,) (module docstring); NaN parameters when none exists."""
    from scipy.optimize import OptimizeWarning, curve_fit

    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    c_max = compute.max()
    x = np.log(compute / c_max)
    e0, a0, alpha0 = (float(v[0]) for v in grid_fit(x, loss[None, :]))
    if not np.isfinite(alpha0):
        return Fit(np.nan, np.nan, np.nan, c_max)
    low, high = np.array([0.0, 0.0, ALPHA_LOW]), np.array([loss.min(), np.inf, ALPHA_HIGH])
    span = np.array([loss.min(), max(a0, 1e-6), ALPHA_HIGH - ALPHA_LOW]) * 1e-6
    start = np.clip([e0, a0, alpha0], low + span, high - span)  # curve_fit starts strictly inside the bounds
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (e, a, alpha), _ = curve_fit(lambda t, e, a, al: e + a * np.exp(-al * t), x, loss, p0=start,
                                         bounds=(low, high), method="trf")
    except RuntimeError:  # no convergence: keep the grid's best
        e, a, alpha = e0, a0, alpha0
    tol = 1e-3 * np.array([max(loss.min(), 1e-9), max(a, 1e-9), ALPHA_HIGH - ALPHA_LOW])
    names = [name for name, v, lo, hi, t in zip(("E", "A", "alpha"), (e, a, alpha), low, high, tol)
             if v - lo < t or hi - v < t]
    return Fit(float(e), float(a), float(alpha), c_max, tuple(names))


def resample(losses: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(B, R) rung means of `losses` (R, S) over B draws of the S seeds with replacement; the draws depend only
    on (S, n_boot, seed), so every variant of a ladder gets the same ones."""
    draws = np.random.default_rng(seed).integers(0, losses.shape[1], size=(n_boot, losses.shape[1]))
    return np.nanmean(losses[:, draws], axis=2).T


def predict(e, a, alpha, x) -> np.ndarray:
    """(B, len(x)) losses of B fits (arrays) at x = ln(C / C_max)."""
    return e[:, None] + a[:, None] * np.exp(-alpha[:, None] * np.asarray(x)[None, :])


def first_crossing(x: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """(B,) the x of the first sign change along each row of diff (B, len(x)), linearly interpolated; NaN where
    the sign never changes (or the row is NaN)."""
    change = np.signbit(diff[:, 1:]) != np.signbit(diff[:, :-1])
    change &= np.isfinite(diff[:, 1:]) & np.isfinite(diff[:, :-1])
    i = change.argmax(1)
    rows = np.arange(len(diff))
    d0, d1 = diff[rows, i], diff[rows, i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        at = x[i] + (x[i + 1] - x[i]) * d0 / (d0 - d1)
    return np.where(change.any(1), at, np.nan)


def interval(values: np.ndarray) -> list[float]:
    """The 95% percentile interval of the finite values ([NaN, NaN] without any)."""
    values = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) else [np.nan, np.nan]


def analyse(compute: dict[str, np.ndarray], losses: dict[str, np.ndarray], n_boot: int = 1000,
            seed: int = 0) -> dict[str, dict]:
    """variant -> its fit, intervals and crossing with the first (reference) variant, JSON-ready. compute:
    variant -> (R,) FLOPs per rung; losses: variant -> (R, S) test loss per rung and seed (NaN: halted)."""
    names = list(compute)
    c_max = max(float(c.max()) for c in compute.values())
    grid = np.linspace(np.log(min(float(c.min()) for c in compute.values()) / c_max), np.log(REACH), 600)
    out, curves = {}, {}
    for name in names:
        means = np.nanmean(losses[name], axis=1)
        point = fit(compute[name], means)
        x = np.log(compute[name] / c_max)
        boot = grid_fit(x, resample(losses[name], n_boot, seed))
        curves[name] = (predict(*(np.array([v]) for v in (point.E, point.a, point.alpha)), grid)[0],
                        predict(*boot, grid))
        far = predict(*boot, np.log(EXTRAPOLATE))
        out[name] = {"rungs": len(means), "E": point.E, "A": point.A, "alpha": point.alpha,
                     "alpha_ci": interval(boot[2]), "at_bounds": list(point.at_bounds),
                     "too_few_rungs": len(means) < MIN_RUNGS, "c_max": c_max,
                     **{f"loss_at_{k:g}x": float(point(k * c_max)) for k in EXTRAPOLATE},
                     **{f"loss_at_{k:g}x_ci": interval(far[:, j]) for j, k in enumerate(EXTRAPOLATE)}}
    ref_point, ref_boot = curves[names[0]]
    for name in names[1:]:
        point, boot = curves[name]
        cross = first_crossing(grid, (point - ref_point)[None, :])[0]
        boot_cross = first_crossing(grid, boot - ref_boot)
        out[name]["crossing_flops"] = float(c_max * np.exp(cross))
        out[name]["crossing_flops_ci"] = [c_max * np.exp(v) for v in interval(boot_cross)]
        out[name]["crossing_share"] = float(np.isfinite(boot_cross).mean())  # replicates that cross
    return out
