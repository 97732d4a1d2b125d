"""The Fact-Aware reward as pure functions (docs/formulas.md, Fact-Aware RL, items 4 and 5).

Denoised factuality reward over claim clusters:

    w(c*_k) = max_j cos(E(c*_k), E(s_j))                               saliency of representative k
    R_fact  = - sum_k w(c*_k) I(c*_k) / (sum_k w(c*_k) + eps)          I = 1 if Refuted or Uncertain

Dynamic aggregation, gated by the response's own task reward:

    lambda(R_task) = sigmoid(kappa (R_task - mu) / Delta),  mu = (tau_min + tau_max)/2,
                     Delta = tau_max - tau_min;  defaults tau_min 0.75, tau_max 0.95, kappa 10
    R = R_task + lambda(R_task) R_fact

Check values: lambda(0.75) = 0.0067, lambda(0.85) = 0.5, lambda(0.95) = 0.993. The gate lets
factuality matter only once a response is already good on the rubric, so early training is not
pushed towards saying less.
Shapes: `claim_emb_ND`, `sent_emb_MD` are L2-normalised rows (cosine = dot product).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FLAGGED_LABELS = ("Refuted", "Uncertain")


def cluster_claims(claim_emb_ND: np.ndarray, threshold: float) -> tuple[list[int], list[int]]:
    """Greedy leader clustering in claim order: a claim joins the first representative with
    cosine >= threshold, else it becomes a new representative.

    Returns (representative indices, cluster id of every claim). Order-stable and deterministic;
    the threshold is OPEN in the paper (config `facts.cluster_threshold`, default 0.9).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"cluster threshold must be in (0, 1], got {threshold}")
    reps: list[int] = []
    assign: list[int] = []
    for i in range(claim_emb_ND.shape[0]):
        if reps:
            sims = claim_emb_ND[reps] @ claim_emb_ND[i]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                assign.append(best)
                continue
        reps.append(i)
        assign.append(len(reps) - 1)
    return reps, assign


def saliency_weights(rep_emb_KD: np.ndarray, sent_emb_MD: np.ndarray) -> np.ndarray:
    """w(c*_k) = max(0, max_j cos(E(c*_k), E(s_j))) for every representative k; shape (K,).

    Unit embeddings give cosines in [-1, 1]. The paper's w = max_j cos is a salience, and R_fact
    divides by sum_k w_k: a negative weight would turn a refuted claim into a BONUS and could push
    the denominator towards 0 (or below). A claim no sentence points towards has no salience, so
    the weight is clipped at 0; R_fact then stays in [-1, 0]. (A claim is extracted from the
    response, so in practice its best sentence is close; the clip only guards the degenerate case.)
    """
    if rep_emb_KD.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    if sent_emb_MD.shape[0] == 0:
        raise ValueError("saliency needs at least one response sentence")
    return np.maximum((rep_emb_KD @ sent_emb_MD.T).max(axis=1), 0.0).astype(np.float64)


def fact_reward(weights_K: Sequence[float], flagged_K: Sequence[bool], eps: float = 1e-8) -> float:
    """R_fact = - sum_k w_k I_k / (sum_k w_k + eps), in [-1, 0] for non-negative weights.

    A response without claims gets 0 (nothing to penalise).
    """
    if len(weights_K) != len(flagged_K):
        raise ValueError(f"{len(weights_K)} weights but {len(flagged_K)} labels")
    if len(weights_K) == 0:
        return 0.0
    num = sum(w for w, f in zip(weights_K, flagged_K, strict=True) if f)
    return -num / (sum(weights_K) + eps)


def dynamic_gate(r_task: float, tau_min: float = 0.75, tau_max: float = 0.95, kappa: float = 10.0) -> float:
    """lambda(R_task) = sigmoid(kappa (R_task - mu) / Delta), mu = (tau_min+tau_max)/2, Delta = tau_max-tau_min."""
    if not tau_max > tau_min:
        raise ValueError(f"need tau_max > tau_min, got {tau_min}, {tau_max}")
    mu, delta = (tau_min + tau_max) / 2, tau_max - tau_min
    x = kappa * (r_task - mu) / delta
    return 1.0 / (1.0 + math.exp(-x))


def combined_reward(r_task: float, r_fact: float, **gate_kw: float) -> float:
    """R = R_task + lambda(R_task) * R_fact."""
    return r_task + dynamic_gate(r_task, **gate_kw) * r_fact


def hallucination_rate(labels: Sequence[str]) -> float:
    """HealthBench-Hallu: H = (1.0 * #refuted + 0.5 * #uncertain) / #claims (0 for no claims)."""
    if not labels:
        return 0.0
    return (sum(lab == "Refuted" for lab in labels) + 0.5 * sum(lab == "Uncertain" for lab in labels)) / len(
        labels
    )
