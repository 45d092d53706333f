"""Keras callbacks of the train driver, each with explicit arguments (imports TensorFlow).

In the order the driver installs them after Horovod's own:

- :class:`AverageBatchStatistics` (several ranks): BatchNorm moving statistics averaged
  over the ranks, so every rank ends with identical weights;
- :class:`EpochLearningRate`: the learning rate an epoch ran with;
- :class:`ResumableReduceLR`, :class:`ResumableEarlyStopping`: Keras' own, with counters
  that survive a restart;
- :class:`EpochEnd`: calls the driver's epoch-end function (checkpoint, history, run.json);
- :class:`StopCheck`: SIGTERM/SIGUSR1 agreed by all ranks, every ``every`` steps and at
  each epoch end; raises :class:`Stopped` on every rank at the same step.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import tensorflow as tf


class Stopped(Exception):
    """Raised on every rank at the same step when any rank was asked to stop."""


class AverageBatchStatistics(tf.keras.callbacks.Callback):
    """Average the non-trainable weights (BatchNorm moving statistics) over the ranks
    before validation and at each epoch end: gradients are averaged by Horovod, these
    are not, and all ranks must end with identical weights."""

    def __init__(self, grouped_allreduce: Callable[[list], list]) -> None:
        super().__init__()
        self._allreduce = grouped_allreduce

    def _sync(self) -> None:
        variables = self.model.non_trainable_weights
        if variables:
            for v, value in zip(variables, self._allreduce([v.value() for v in variables]),
                                strict=True):
                v.assign(value)

    def on_test_begin(self, logs=None):
        self._sync()

    def on_epoch_end(self, epoch, logs=None):
        self._sync()


class _Resumable(tf.keras.callbacks.Callback):
    """Counters of a Keras callback that survive a restart: restored after the
    callback's own reset at the start of ``fit``."""

    KEYS: tuple[str, ...] = ()

    def __init__(self, restore: dict | None = None, **kw):
        super().__init__(**kw)
        self._restore = restore

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for k, v in (self._restore or {}).items():
            setattr(self, k, math.inf if v is None and k == "best" else v)

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.KEYS:
            v = getattr(self, k)
            out[k] = (float(v) if math.isfinite(float(v)) else None) if k == "best" else int(v)
        return out


class ResumableReduceLR(_Resumable, tf.keras.callbacks.ReduceLROnPlateau):
    KEYS = ("wait", "cooldown_counter", "best")


class ResumableEarlyStopping(_Resumable, tf.keras.callbacks.EarlyStopping):
    """Patience counts from the best epoch (Keras' rule). The best weights are kept by
    the driver (checkpoint and model.keras), not restored here."""

    KEYS = ("wait", "best", "best_epoch", "stopped_epoch")


class EpochLearningRate(tf.keras.callbacks.Callback):
    """The learning rate the epoch ran with, read before ReduceLROnPlateau changes it."""

    def __init__(self, optimizer) -> None:
        super().__init__()
        self._optimizer = optimizer
        self.lr = math.nan

    def on_epoch_end(self, epoch, logs=None):
        self.lr = float(tf.keras.backend.get_value(self._optimizer.lr))


class EpochTimer(tf.keras.callbacks.Callback):
    """Wall and CPU seconds of the epoch and of its training phase (before validation)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = self.t_val = time.time()
        self.cpu0 = self.cpu_val = time.process_time()

    def on_test_begin(self, logs=None):
        self.t_val, self.cpu_val = time.time(), time.process_time()

    def times(self) -> dict[str, float]:
        return {"epoch_s": time.time() - self.t0, "train_s": self.t_val - self.t0,
                "train_cpu_s": self.cpu_val - self.cpu0}


class EpochEnd(tf.keras.callbacks.Callback):
    """Call ``handler(epoch, logs, stop_training)`` after the callbacks that change state."""

    def __init__(self, handler: Callable[[int, dict, bool], None]) -> None:
        super().__init__()
        self._handler = handler

    def on_epoch_end(self, epoch, logs=None):
        self._handler(epoch, dict(logs or {}), bool(self.model.stop_training))


class StopCheck(tf.keras.callbacks.Callback):
    """Stop between steps when any rank got SIGTERM/SIGUSR1.

    ``requested()`` reads this rank's flag; ``agree(flag) -> int`` sums it over the
    ranks (one small allreduce; identity with one rank). Checked after every ``every``
    steps (Keras calls batch hooks once per ``steps_per_execution`` steps, and counts
    ``batch`` in steps) and at the end of every epoch but the last."""

    def __init__(self, requested: Callable[[], bool], agree: Callable[[int], int], every: int,
                 last_epoch: int) -> None:
        super().__init__()
        self._requested, self._agree = requested, agree
        self._every, self._last = max(1, every), last_epoch
        self._next = self._every

    def on_epoch_begin(self, epoch, logs=None):
        self._next = self._every

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 >= self._next:
            self._next = batch + 1 + self._every
            self.check()

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 < self._last and not self.model.stop_training:
            self.check()

    def check(self) -> None:
        if self._agree(int(self._requested())):
            raise Stopped()
