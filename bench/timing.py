"""Timing helpers shared by the benchmarks: an epoch timer for ``fit`` and paired ratios."""

from __future__ import annotations

import time

import keras
import numpy as np


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of each epoch, between on_epoch_begin and on_epoch_end (``fit``'s
    own set-up is not counted)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def paired_ratio(times, numerator, denominator):
    """Median and interquartile range over rounds of ``times[numerator][r] /
    times[denominator][r]`` (both timed in round r, so a drift in machine speed cancels)."""
    ratios = np.asarray(times[numerator]) / np.asarray(times[denominator])
    return (float(np.median(ratios)), float(np.percentile(ratios, 25)),
            float(np.percentile(ratios, 75)))
