"""AdamW with the exact update of ``torch.optim.AdamW`` (decoupled weight decay, bias
correction), so the numpy backend's optimizer behaves like the torch backend's."""

from __future__ import annotations

import numpy as np

from loraswitch.core.api import ADAMW_BETAS, ADAMW_EPS


class AdamW:
    def __init__(
        self,
        params: dict[str, np.ndarray],
        *,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = ADAMW_BETAS,
        eps: float = ADAMW_EPS,
    ):
        self.weight_decay = weight_decay
        self.betas = betas
        self.eps = eps
        self.t = 0  # completed updates
        self.exp_avg = {k: np.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update ``params`` in place, in torch's order: decay, moments, bias-corrected step."""
        b1, b2 = self.betas
        self.t += 1
        bc1 = 1.0 - b1**self.t
        bc2 = 1.0 - b2**self.t
        for k, p in params.items():
            g = grads[k]
            p *= 1.0 - lr * self.weight_decay
            m, v = self.exp_avg[k], self.exp_avg_sq[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            denom = np.sqrt(v) / np.sqrt(bc2) + self.eps
            p -= (lr / bc1) * m / denom


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm`` (the formula of
    ``torch.nn.utils.clip_grad_norm_``); returns the norm before clipping."""
    total = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= coef
    return total
