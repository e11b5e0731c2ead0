"""The linear algebra every low-rank method shares, in float64, failing loudly.

`W` is a layer's weight as `(out m, in n)`; `G = X^T X / T` the second moment of its
input over `T` calibration tokens (from the calibrate stage). A factorisation is `(A, B)`
with `A` `(m, k)` and `B` `(k, n)`, so `W' = A B` holds `k (m + n)` parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("actsparse.decompose")


class FactorizationError(RuntimeError):
    """A decomposition that failed (never replaced by a fallback nobody sees)."""


def rank_for_ratio(m: int, n: int, ratio: float, where: str = "") -> int:
    """SVD-LLM's convention: `R` is the fraction of the layer's parameters *removed*, and
    the rank keeping the rest is `k = int(m n (1 - R) / (m + n))`."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{where}: compression ratio must be in (0, 1), got {ratio}")
    k = int(m * n * (1.0 - ratio) / (m + n))
    if k < 1:
        raise ValueError(f"{where}: ratio {ratio} leaves rank 0 for a {m} x {n} weight")
    return k


def check_finite(t: torch.Tensor, what: str, where: str) -> None:
    if not torch.isfinite(t).all():
        raise FloatingPointError(f"{where}: non-finite values (NaN or inf) in {what}")


def svd(M: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float64; a failure is an error naming the layer."""
    check_finite(M, "the matrix to decompose", where)
    try:
        U, s, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    except RuntimeError as e:  # torch.linalg.LinAlgError is a RuntimeError
        raise FactorizationError(f"{where}: SVD failed: {e}") from e
    return U, s, Vh


def split_factors(
    U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`A = U_k sqrt(S_k)`, `B = sqrt(S_k) V_k^T`: the singular values split evenly."""
    root = s[:k].sqrt()
    return U[:, :k] * root, root[:, None] * Vh[:k]


def truncated(W: torch.Tensor, k: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-k approximation of `W` in Frobenius norm (Eckart-Young), as factors."""
    return split_factors(*svd(W, where), k)


@dataclass
class Whitening:
    """A square root `S` of `G` (`S S^T = G`, up to the recorded ridge) and its inverse.

    `kind` is `cholesky` (SVD-LLM: lower-triangular `S`, applied with triangular solves) or
    `eigh` (SVD-LLM v2: `S = U sqrt(Λ)` over the positive eigenvalues; no definiteness
    needed, the null space of `G` is dropped). `ridge` is the `δ` added to the diagonal
    (0 unless `G` was not positive definite).
    """

    kind: str
    S: torch.Tensor  # (n, r)
    ridge: float
    _U: torch.Tensor | None = None  # eigh: eigenvectors (n, r)
    _root: torch.Tensor | None = None  # eigh: sqrt of the kept eigenvalues (r,)

    def right_inverse(self, B: torch.Tensor) -> torch.Tensor:
        """`B S^-1` (Cholesky) or `B S^+` (eigh) for `B` of shape (k, r)."""
        if self.kind == "cholesky":
            return torch.linalg.solve_triangular(self.S, B, upper=False, left=False)
        return (B / self._root) @ self._U.T


def whitening(G: torch.Tensor, kind: str, where: str, eps: float = 1e-10) -> Whitening:
    """The whitening factor of a second-moment matrix `G` (float64).

    Cholesky first; when `G` is not positive definite, the ridge
    `δ = -λ_min + max(eps·mean(diag G), n·ε·λ_max)` is added (up to 1000x that margin on
    retries) and the choice is logged and recorded, never silent.
    """
    check_finite(G, "the calibration covariance", where)
    G = G.double()
    G = (G + G.T) / 2
    scale = float(G.diagonal().mean().clamp_min(1e-300))
    if kind == "cholesky":
        L, info = torch.linalg.cholesky_ex(G)
        ridge = 0.0
        if int(info) != 0:
            lam = torch.linalg.eigvalsh(G)
            lam_min, lam_max = float(lam[0]), float(lam[-1])
            # eigvalsh itself errs by ~ n eps lambda_max: the margin covers it
            margin = max(eps * scale, len(G) * torch.finfo(G.dtype).eps * abs(lam_max))
            eye = torch.eye(len(G), dtype=G.dtype, device=G.device)
            for attempt in range(4):  # each retry: 10x the margin, logged
                ridge = max(-lam_min, 0.0) + margin * 10**attempt
                log.warning(
                    "%s: covariance not positive definite (lambda_min %.3g); ridge %.3g added",
                    where, lam_min, ridge,
                )  # fmt: skip
                L, info = torch.linalg.cholesky_ex(G + ridge * eye)
                if int(info) == 0:
                    break
            else:
                raise FactorizationError(
                    f"{where}: Cholesky failed even with ridge {ridge:.3g} (lambda_min {lam_min:.3g})"
                )
        return Whitening("cholesky", L, ridge)
    if kind == "eigh":
        try:
            lam, U = torch.linalg.eigh(G)
        except RuntimeError as e:
            raise FactorizationError(f"{where}: eigendecomposition failed: {e}") from e
        keep = lam > lam[-1].clamp_min(0) * len(G) * torch.finfo(G.dtype).eps
        if not keep.any():
            raise FactorizationError(f"{where}: the calibration covariance is zero")
        root = lam[keep].sqrt()
        return Whitening("eigh", U[:, keep] * root, 0.0, U[:, keep], root)
    raise ValueError(f"{where}: whitening must be 'cholesky' or 'eigh', got {kind!r}")


def whitened_truncation(
    W: torch.Tensor, wh: Whitening, k: int, where: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD-LLM: `W S = U Σ V^T`, `A = U_k Σ_k^½`, `B = Σ_k^½ V_k^T S^-1`.

    Returns `(A, B, σ)` with `σ` the singular values of `W S`: the loss
    `||(W - A B) X||_F^2 = T · Σ_{i>k} σ_i^2` (plus `δ ||E||_F^2` with a ridge `δ`).
    """
    U, s, Vh = svd(W.double() @ wh.S, where)
    A, B = split_factors(U, s, Vh, k)
    return A, wh.right_inverse(B), s


def update_left(W: torch.Tensor, B: torch.Tensor, G: torch.Tensor, where: str) -> torch.Tensor:
    """SVD-LLM's closed-form update of the left factor: the `A` minimising
    `||(W - A B) X'||_F` for the inputs `X'` with second moment `G = X'^T X' / T'`,
    `A = W G B^T (B G B^T)^-1` (the reference code's `lstsq`, solved here through the
    Cholesky factor of the k x k normal matrix, in float64).

    With `B` a whitened truncation's right factor and `G` the covariance it was whitened
    with, this is that truncation's own left factor; a normal matrix that is not positive
    definite (inputs that do not span the factor's row space) is an error, not a
    fallback."""
    check_finite(G, "the update's input covariance", where)
    W, B, G = W.double(), B.double(), G.double()
    GBt = G @ B.T  # (n, k)
    normal = B @ GBt
    normal = (normal + normal.T) / 2
    L, info = torch.linalg.cholesky_ex(normal)
    if int(info) != 0:
        raise FactorizationError(
            f"{where}: the update's normal matrix B G B^T is not positive definite (the "
            "update's inputs do not span the right factor's rows); more update_tokens?"
        )
    return torch.cholesky_solve((W @ GBt).T, L).T
