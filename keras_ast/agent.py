"""AGENT: adaptive gradient correction for sparse training (Lei et al., "Balance is Essence:
Accelerating Sparse Training via Adaptive Gradient Correction", arXiv 2301.03573), as its
official code implements it (docs/agent.md).

An SVRG-style control variate with a damped, adaptive coefficient. Per epoch, a pass over the
training data (`AgentPass`, at the start of the epoch) records each batch's loss at the current
weights w and at the previous epoch's snapshot w~, the mean gradient mu~ at w, then

    tau_cur = Cov(L_cur, L_prev) / Var(L_prev)        (ddof = 1, as np.cov / np.var(ddof=1))
    tau^   <- (1 - alpha) tau^ + alpha tau_cur          (alpha = 0.3, tau^ starts at 0.1)
    c       = gamma tau^                                (gamma = 0.1)
    w~     <- w

and every step corrects the gradient g of its batch with the gradient q of the same batch at
the snapshot: ``g~ = g + c (mu~ - q)``. With K sub-nets each has its own mu~ (from the pass's
batches b with b mod K = k), and the correction of a pruned kernel is restricted to the
sub-net's mask. In the step, AGENT comes before gradient correction (GC projects g~ against
the previous step's applied gradient; keras_ast/step.py).
"""

from __future__ import annotations

import math

import keras
import numpy as np


class Agent:
    """AGENT's hyperparameters (the official code's defaults).

    Args:
      alpha: forgetting rate of the exponential average of tau (0 < alpha <= 1).
      gamma: scale of the control variate, c = gamma * tau^ (>= 0; 0 turns the correction off
        while keeping the passes, which a test uses).
      tau0: the average's starting value.
    """

    def __init__(self, alpha=0.3, gamma=0.1, tau0=0.1):
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"AGENT alpha must be in (0, 1], got {alpha!r}")
        if not (math.isfinite(float(gamma)) and float(gamma) >= 0.0):
            raise ValueError(f"AGENT gamma must be >= 0, got {gamma!r}")
        if not math.isfinite(float(tau0)):
            raise ValueError(f"AGENT tau0 must be finite, got {tau0!r}")
        self.alpha, self.gamma, self.tau0 = float(alpha), float(gamma), float(tau0)

    def get_config(self):
        return {"alpha": self.alpha, "gamma": self.gamma, "tau0": self.tau0}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"Agent(alpha={self.alpha}, gamma={self.gamma}, tau0={self.tau0})"


def get(agent):
    """None, an `Agent`, True (the defaults) or an `Agent` config dict -> None or an Agent."""
    if agent is None or agent is False:
        return None
    if agent is True:
        return Agent()
    if isinstance(agent, Agent):
        return agent
    if isinstance(agent, dict):
        return Agent.from_config(agent)
    raise TypeError(f"agent must be None, True, a keras_ast.Agent or its config, got {agent!r}")


def tau_estimate(current_losses, snapshot_losses):
    """Cov(L_cur, L_prev) / Var(L_prev) with ddof = 1, or None if it is undefined (fewer than
    two batches, or every snapshot loss equal)."""
    cur = np.asarray(current_losses, np.float64)
    prev = np.asarray(snapshot_losses, np.float64)
    if prev.size < 2:
        return None
    variance = np.var(prev, ddof=1)
    if not variance > 0.0:
        return None
    return float(np.cov(cur, prev, ddof=1)[0, 1] / variance)


def updated_tau(tau_hat, tau_cur, alpha):
    """(1 - alpha) tau^ + alpha tau_cur (tau^ unchanged when tau_cur is undefined)."""
    if tau_cur is None:
        return float(tau_hat)
    return (1.0 - alpha) * float(tau_hat) + alpha * float(tau_cur)


class AgentPass(keras.callbacks.Callback):
    """AGENT's per-epoch pass (`ASTModel.agent_epoch_pass`) at the start of every epoch.

    Args:
      data: the training data to pass over: a tf.data.Dataset of (x, y) or (x, y, weight)
        batches, or a function ``epoch -> dataset`` (the launcher passes the epoch's own
        batches, ``source.epochs(epoch, epoch + 1)``). Give an unshuffled copy, or one whose
        order does not depend on how often it is iterated: the pass iterates it once more per
        epoch, which would change the order ``fit`` sees from a dataset that reshuffles on
        every iteration.

    Logs ``agent_tau`` and ``agent_coef`` (c) at the end of every epoch. A resumed run does not
    repeat the pass of an epoch it already made (the count is in the model's checkpoint).
    """

    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_epoch_begin(self, epoch, logs=None):
        if self.model.agent is None:
            raise ValueError("AgentPass needs a model built with ASTModel(..., agent=...)")
        if int(self.model.agent_passes.numpy()) <= epoch:
            self.model.agent_epoch_pass(self.data(epoch) if callable(self.data) else self.data)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["agent_tau"] = float(self.model.agent_tau.numpy())
            logs["agent_coef"] = float(self.model.agent_coef.numpy())
