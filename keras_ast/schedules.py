"""Schedules: gradual cubic sparsity per sub-net, cosine-decaying regrow ratio, update timing,
and the cubic ramp of the fraction of N:M-sparse groups (N:M sub-nets).

Schedule objects are small and serialisable (like tfmot's `PolynomialDecay`): their methods take
a step (a Python int or a scalar tensor) and return keras.ops values, so the same object drives
both the compiled training step and eager reporting.
"""

from __future__ import annotations

import math

from keras import ops


def _check_fraction(name, value, upper_open=True):
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")


class _Schedule:
    """Config plumbing shared by the schedules: ``from_config(get_config())`` round-trips."""

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class CubicSparsity(_Schedule):
    """Gradual cubic sparsity (Zhu & Gupta) with periodic update times.

    Updates are scheduled at ``T_j = begin_step + offset + j * frequency`` (j = 0, 1, ...). The
    target sparsity at update j is ``s_f + (s_i - s_f) * (1 - p_j)^3`` with
    ``p_j = min(1, j * frequency / (end_step - begin_step))``: it starts at `initial_sparsity`
    and reaches `final_sparsity` at the first update at or after ``end_step + offset``.
    Updates go on after that (prune-and-regrow at constant sparsity) until training ends.

    Args:
      initial_sparsity: s_i in [0, 1).
      final_sparsity: s_f in [s_i, 1).
      begin_step, end_step: iterations where the ramp starts and ends (end > begin >= 0).
      frequency: iterations between two updates (F >= 1).
      offset: shift of this schedule's update times (the staggering between sub-nets).
    """

    _final_may_be_one = False  # a sparsity of 1 (an empty sub-net) makes no sense

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, frequency,
                 offset=0):
        _check_fraction("initial_sparsity", initial_sparsity)
        _check_fraction("final_sparsity", final_sparsity, upper_open=not self._final_may_be_one)
        if final_sparsity < initial_sparsity:
            raise ValueError(
                f"final_sparsity ({final_sparsity}) must be >= initial_sparsity "
                f"({initial_sparsity})"
            )
        if not (isinstance(frequency, int) and frequency >= 1):
            raise ValueError(f"frequency must be an integer >= 1, got {frequency!r}")
        if not (0 <= begin_step < end_step):
            raise ValueError(
                f"need 0 <= begin_step < end_step, got begin_step={begin_step}, "
                f"end_step={end_step}"
            )
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset!r}")
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)
        self.offset = int(offset)

    @property
    def first_update(self):
        return self.begin_step + self.offset

    @property
    def final_update(self):
        """The first scheduled update at which the final sparsity is reached."""
        span = self.end_step - self.begin_step
        return self.first_update + math.ceil(span / self.frequency) * self.frequency

    def update_index(self, step):
        """j of the last update scheduled at or before `step` (-1 before the first)."""
        step = ops.cast(step, "int64")
        return ops.floor_divide(step - self.first_update, self.frequency)

    def is_due(self, step, window=1):
        """True if an update is scheduled in ``(step - window, step]``.

        With K alternating sub-nets, sub-net k runs only every K-th step; an update scheduled
        at T is carried out at the first step >= T where k is active, i.e. with window=K.
        """
        if window > self.frequency:
            raise ValueError(f"window ({window}) must not exceed frequency ({self.frequency})")
        step = ops.cast(step, "int64")
        now = self.update_index(step)
        before = self.update_index(step - window)
        return ops.logical_and(now >= 0, now > before)

    def sparsity(self, step):
        """Target sparsity of the last update scheduled at or before `step` (float32)."""
        j = ops.maximum(self.update_index(step), 0)
        progress = ops.minimum(
            ops.cast(j * self.frequency, "float32") / float(self.end_step - self.begin_step), 1.0
        )
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        return s_f + (s_i - s_f) * (1.0 - progress) ** 3

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "offset": self.offset,
        }


class CubicGroupFraction(CubicSparsity):
    """Fraction of a sub-net's weight groups that are N:M-sparse (`keras_ast.nm`).

    The same cubic ramp and update times as `CubicSparsity`, from 0 to 1: at update j the
    fraction is ``1 - (1 - p_j)^3``, and every group is N:M-sparse from the first update at or
    after ``end_step + offset`` on.
    """

    _final_may_be_one = True

    def __init__(self, begin_step, end_step, frequency, offset=0):
        super().__init__(0.0, 1.0, begin_step, end_step, frequency, offset=offset)

    def fraction(self, step):
        """Fraction of N:M-sparse groups after the last update at or before `step` (float32)."""
        return self.sparsity(step)

    def get_config(self):
        config = super().get_config()
        del config["initial_sparsity"], config["final_sparsity"]
        return config


class ConstantSparsity(CubicSparsity):
    """Constant sparsity with periodic update times that stop at `end_step` (tfmot's
    `ConstantSparsity`, RigL's mask-update timing; used by `keras_ast.updaters`).

    Updates are scheduled at ``T_j = begin_step + offset + j * frequency`` for every j with
    ``j * frequency <= end_step - begin_step``; the sparsity is `sparsity` at every step (the
    masks start at it, so there is no ramp).
    """

    def __init__(self, sparsity, begin_step, end_step, frequency, offset=0):
        super().__init__(sparsity, sparsity, begin_step, end_step, frequency, offset=offset)

    @property
    def final_update(self):
        """The sparsity is reached from the start (the initial masks)."""
        return self.first_update

    @property
    def last_update(self):
        """The last scheduled update (at or before ``end_step + offset``)."""
        span = self.end_step - self.begin_step
        return self.first_update + (span // self.frequency) * self.frequency

    def is_due(self, step, window=1):
        """True if an update is scheduled in ``(step - window, step]`` (see `CubicSparsity`)
        and it is not past the last one."""
        due = super().is_due(step, window=window)
        index = self.update_index(ops.cast(step, "int64"))
        return ops.logical_and(due, index * self.frequency <= self.end_step - self.begin_step)

    def get_config(self):
        return {
            "sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "offset": self.offset,
        }


class CosineDecay(_Schedule):
    """Cosine decay from `initial` to `final` over `decay_steps`, then constant at `final`.

    Used for the death/regrow ratio r (GraNet: 0.5 -> 0.005 over the whole run).
    """

    def __init__(self, initial=0.5, final=0.005, decay_steps=1):
        _check_fraction("initial regrow ratio", initial, upper_open=False)
        _check_fraction("final regrow ratio", final, upper_open=False)
        if not (isinstance(decay_steps, int) and decay_steps >= 1):
            raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps!r}")
        self.initial = float(initial)
        self.final = float(final)
        self.decay_steps = int(decay_steps)

    def __call__(self, step):
        progress = ops.minimum(ops.cast(step, "float32") / float(self.decay_steps), 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.final + (self.initial - self.final) * cosine

    def get_config(self):
        return {"initial": self.initial, "final": self.final, "decay_steps": self.decay_steps}


def _staggered_offsets(num, frequency, adjustment_period):
    """Update-time shifts ``k * adjustment_period`` of `num` sub-nets, checked as in
    `staggered_schedules`."""
    if num > 1:
        if not (isinstance(adjustment_period, int) and adjustment_period >= 1):
            raise ValueError(
                f"adjustment_period must be an integer >= 1 with {num} sub-nets "
                f"(0 would make them all update at the same step), got {adjustment_period!r}"
            )
        if (num - 1) * adjustment_period >= frequency:
            raise ValueError(
                f"update frequency {frequency} is too short for {num} sub-nets staggered by "
                f"adjustment_period={adjustment_period}: sub-net {num - 1}'s update would "
                f"collide with the next round (need (K-1)*adjustment_period < frequency, i.e. "
                f"frequency > {(num - 1) * adjustment_period})"
            )
    if frequency < num:
        raise ValueError(f"update frequency {frequency} must be >= the number of sub-nets {num}")
    return [k * (adjustment_period if num > 1 else 0) for k in range(num)]


def staggered_schedules(initial_sparsity, sparsities, begin_step, end_step, frequency,
                        adjustment_period):
    """One `CubicSparsity` per sub-net, sub-net k shifted by ``k * adjustment_period``.

    Raises ValueError if two sub-nets would be scheduled to update at the same step: the K
    shifts must be distinct modulo `frequency`, which holds iff ``adjustment_period >= 1`` and
    ``(K - 1) * adjustment_period < frequency``; and if `frequency` < K (then a sub-net, which
    runs every K-th step, could miss updates).
    """
    offsets = _staggered_offsets(len(sparsities), frequency, adjustment_period)
    return [
        CubicSparsity(initial_sparsity, s, begin_step, end_step, frequency, offset=offset)
        for s, offset in zip(sparsities, offsets)
    ]


def staggered_group_fractions(num_subnets, begin_step, end_step, frequency, adjustment_period):
    """One `CubicGroupFraction` per N:M sub-net, with `staggered_schedules`' update times."""
    return [
        CubicGroupFraction(begin_step, end_step, frequency, offset=offset)
        for offset in _staggered_offsets(num_subnets, frequency, adjustment_period)
    ]


def staggered_constant_sparsities(sparsities, begin_step, end_step, frequency,
                                  adjustment_period):
    """One `ConstantSparsity` per sub-net, with `staggered_schedules`' update times (and
    checks)."""
    offsets = _staggered_offsets(len(sparsities), frequency, adjustment_period)
    return [
        ConstantSparsity(s, begin_step, end_step, frequency, offset=offset)
        for s, offset in zip(sparsities, offsets)
    ]
