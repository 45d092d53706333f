"""What a training job records at each epoch end and when it finishes (rank 0 writes).

:class:`Recorder` owns the job's :class:`~lenshpc.train.state.TrainState` while
``model.fit`` runs: at each epoch end it appends the history row, follows the best
epoch (lowest finite val_loss) and keeps its weights, and writes checkpoint.npz,
history.csv and run.json. :meth:`Recorder.finish` saves model.keras (best or last
weights, ``train.keep``), the final run.json and, last, the completion marker.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from lenshpc import __version__
from lenshpc.dataset.columns import TARGETS
from lenshpc.io import atomic_path, file_sha256
from lenshpc.lock import mark_done
from lenshpc.train.state import (
    Checkpoint,
    TrainState,
    save_checkpoint,
    weights_sha256,
    write_history,
    write_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from lenshpc.train.plan import JobPlan


def _versions() -> dict[str, str]:
    import h5py
    import horovod
    import tensorflow as tf
    return {"lenshpc": __version__, "tensorflow": tf.__version__, "horovod": horovod.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__,
            "python": platform.python_version()}


def devices_summary(devices: list[dict[str, Any]]) -> str:
    """run.json's ``devices`` (one record per rank) in a few words for a report, e.g.
    ``2 x NVIDIA A100-SXM4-40GB; mixed_float16, XLA, 32 steps/call, input memory (device)``
    or ``1 x CPU (TF without CUDA); float32, 1 step/call, input stream``; ``?`` for none.

    Ranks on different devices are listed as ``n x name`` each; settings are rank 0's
    (every rank runs the same)."""
    if not devices:
        return "?"
    counts: dict[str, int] = {}
    for d in devices:
        name = str(d.get("name", "?"))
        if d.get("device") == "cpu" and not d.get("tf_built_with_cuda", True):
            name += " (TF without CUDA)"
        counts[name] = counts.get(name, 0) + 1
    text = ", ".join(f"{n} x {name}" for name, n in counts.items())
    first = devices[0]
    if "precision" not in first:  # written before these settings were recorded
        return text
    spe = first.get("steps_per_execution")
    parts = [str(first["precision"]), *(["XLA"] if first.get("jit_compile") else []),
             f"{spe} step{'s' if spe != 1 else ''}/call", f"input {first.get('input', '?')}"
             + (f" ({first['placement']})" if first.get("placement") not in (None, "host")
                else "")]
    return f"{text}; {', '.join(parts)}"


def update_best(best: dict[str, float] | None, row: dict[str, float]) -> dict[str, float] | None:
    """The best epoch after history row ``row``: ``row``'s epoch if its val_loss is finite
    and strictly lower than the best so far (a tie keeps the earlier epoch, as Keras'
    EarlyStopping does), else ``best`` unchanged."""
    v = row["val_loss"]
    if math.isfinite(v) and (best is None or v < best["val_loss"]):
        return {"epoch": int(row["epoch"]), "val_loss": v, "val_mae": row["val_mae"]}
    return best


class Recorder:
    """Bookkeeping of one job during ``fit`` (every rank keeps it; rank 0 writes).

    ``model``/``optimizer`` are the compiled Keras objects; ``lr_of_epoch()`` and
    ``callback_states()`` read the learning rate an epoch ran with and the resumable
    callbacks' counters; ``timer.times()`` the epoch's seconds; ``rng_states()`` the
    dropout generators' states; ``optimizer_state()`` the optimizer's weights (by default
    ``optimizer.get_weights()``; in mixed precision also the loss scale)."""

    def __init__(self, plan: "JobPlan", state: TrainState, *, model, optimizer, scaled_lr: float,
                 n_ranks: int, root: bool, images_per_epoch: int, best_weights, timer,
                 lr_of_epoch, callback_states, rng_states, optimizer_state=None) -> None:
        self.plan, self.state, self.model, self.optimizer = plan, state, model, optimizer
        self.scaled_lr, self.n_ranks, self.root = scaled_lr, n_ranks, root
        self.images_per_epoch = images_per_epoch
        self.best_weights = best_weights
        self.timer, self.lr_of_epoch = timer, lr_of_epoch
        self.callback_states, self.rng_states = callback_states, rng_states
        self.optimizer_state = optimizer_state or optimizer.get_weights
        self.started = plan.started

    @property
    def wall_time_s(self) -> float:
        return self.state.wall_time_before_s + (time.time() - self.started)

    def epoch_end(self, epoch: int, logs: dict, stop_training: bool) -> None:
        import tensorflow as tf
        st, plan = self.state, self.plan
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in
                                      ("loss", "val_loss", "mae", "val_mae")},
               "lr": self.lr_of_epoch()}
        st.history = [*st.history, row]
        st.epochs_done = epoch + 1
        st.lr_factor = float(tf.keras.backend.get_value(self.optimizer.lr)) / self.scaled_lr
        st.callbacks = self.callback_states()
        st.early_stopped = stop_training and epoch + 1 < plan.epochs
        best = update_best(st.best, row)
        if best is not st.best:
            st.best = best
            if self.root:
                self.best_weights = self.model.get_weights()
        times = self.timer.times()
        st.epoch_seconds = [*st.epoch_seconds, times["epoch_s"]]
        st.train_seconds = [*st.train_seconds, times["train_s"]]
        st.train_cpu_seconds = [*st.train_cpu_seconds, times["train_cpu_s"]]
        st.images_trained += self.images_per_epoch
        st.epoch_images = [*st.epoch_images, self.images_per_epoch]
        if not self.root:
            return
        files = plan.files
        files.root.mkdir(parents=True, exist_ok=True)
        # The session's time so far goes into the checkpoint, so a resumed job reports
        # the wall time of all its sessions.
        saved = TrainState(**{**vars(st), "wall_time_before_s": self.wall_time_s})
        save_checkpoint(files.checkpoint,
                        Checkpoint(self.model.get_weights(), self.optimizer_state(),
                                   list(self.best_weights or []), self.rng_states(), saved))
        self.write_products(False)
        best_epoch = f"{st.best['epoch']:.0f}" if st.best else "-"
        print(f"epoch {epoch + 1}/{plan.epochs}  loss {row['loss']:.4g}  val_loss "
              f"{row['val_loss']:.4g}  mae {row['mae']:.4g}  val_mae {row['val_mae']:.4g}  "
              f"lr {row['lr']:.3g}  best {best_epoch}  "
              f"{self.images_per_epoch / times['epoch_s']:.0f} img/s", flush=True)

    def write_products(self, finished: bool, extra: dict[str, Any] | None = None) -> None:
        files = self.plan.files
        files.root.mkdir(parents=True, exist_ok=True)
        write_history(files.history, self.state.history)
        write_json(files.run_json, self.run_record(finished, extra))

    def finish(self, final_model, weights_digests: list[str], val_x: np.ndarray,
               val_ids: np.ndarray, n_sample: int) -> None:
        """Save model.keras (``train.keep``), the final run.json, then the marker (rank 0)."""
        plan, files = self.plan, self.plan.files
        keep = plan.cfg.train.keep
        if keep == "best" and self.best_weights:
            final_model.set_weights(self.best_weights)
        saved_epoch = (self.state.best or {}).get("epoch") if keep == "best" \
            else self.state.epochs_done
        k = min(n_sample, len(val_ids))
        predicted = final_model(val_x[:k], training=False).numpy().astype(np.float64)
        with atomic_path(files.model, sync=True) as tmp:
            final_model.save(tmp)
        self.write_products(True, {
            "weights_sha256": list(weights_digests),
            "model_epoch": saved_epoch,
            "model_weights_sha256": weights_sha256(final_model.get_weights()),
            "model_sha256": file_sha256(files.model),
            "sample_predictions": {"index": [int(i) for i in val_ids[:k]],
                                   "values": predicted.tolist()}})
        mark_done(files.root, files.PRODUCT, files.finished_products,
                  info={"model_epoch": saved_epoch, "epochs_done": self.state.epochs_done})

    def run_record(self, finished: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The content of run.json (docs/train.md: the contract with evaluate)."""
        plan, st, t = self.plan, self.state, self.plan.cfg.train
        seconds = sum(st.epoch_seconds)
        last = st.history[-1] if st.history else {}
        best = st.best or {}
        record = {
            "finished": finished,
            "model": plan.job.model.name, "fold": plan.job.fold, "job": plan.job.index,
            "p1": plan.job.model.p1, "p2": plan.job.model.p2,
            "overrides": dict(plan.job.model.overrides),
            "train": t.effective(),
            "epochs": plan.epochs, "epochs_done": st.epochs_done,
            "early_stopped": st.early_stopped,
            "keep": t.keep,
            "best_epoch": best.get("epoch"),
            "best_val_loss": best.get("val_loss"),
            "best_val_mae": best.get("val_mae"),
            "final": {k: last.get(k) for k in ("loss", "val_loss", "mae", "val_mae", "lr")},
            "metrics_note": ("loss: weighted MSE of " + ("standardised" if t.standardize_targets
                                                         else "physical") + " targets; mae: "
                             "mean absolute error over theta_E (arcsec), q, e1, e2 in "
                             "physical units"),
            "dataset": str(plan.dataset.path.parent.resolve()),
            "dataset_checksum": plan.dataset.checksum,
            "n_train": int(len(plan.train_items)), "n_val": int(len(plan.val_items)),
            "targets": list(TARGETS),
            "target_mean": [float(v) for v in plan.target_mean],
            "target_std": [float(v) for v in plan.target_std],
            "loss_weights": list(t.loss_weights),
            "batch_size_per_rank": t.batch_size,
            "learning_rate": t.learning_rate * self.n_ranks,
            "n_ranks": self.n_ranks,
            "devices": plan.devices,
            "sessions": st.sessions,
            "wall_time_s": round(self.wall_time_s, 3),
            "train_time_s": round(seconds, 3),
            "images_per_s": round(st.images_trained / seconds, 2) if seconds else None,
            "timing": {"note": "per epoch: training images (all ranks), seconds of the whole "
                               "epoch (training, validation, checkpoint) and of its training "
                               "phase, CPU seconds of rank 0's process in the training phase",
                       "images": st.epoch_images,
                       "epoch_s": [round(v, 4) for v in st.epoch_seconds],
                       "train_s": [round(v, 4) for v in st.train_seconds],
                       "train_cpu_s": [round(v, 4) for v in st.train_cpu_seconds]},
            "config": plan.cfg.to_yaml_text(),
            "versions": _versions(),
            "command": " ".join(sys.argv),
        }
        record.update(extra or {})
        return record
