"""The train driver: one job (dropout model x fold) as one process or N Horovod ranks.

Order of events (every rank runs the same code):

1. :func:`plan_job` checks everything the user gave (config, dataset, fold, the job
   directory) with numpy and h5py only, identically on every rank, before TensorFlow,
   Horovod or any collective call starts; a problem is one :class:`UserError` line.
2. :func:`run_job`: ``hvd.init()``, device pinned by local rank, threads shared by the
   ranks of a node; each rank reads its own part of the fold into memory; the model is
   built (same seed everywhere) and restored from ``checkpoint.npz`` when there is one;
   ``model.fit`` with Horovod's callbacks in the canonical order; rank 0 writes.
3. SIGTERM/SIGUSR1 set a flag; the ranks agree on it after every step and stop together,
   abandoning the unfinished epoch (the last whole epoch is already on disk): exit 75.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc import __version__
from lenshpc.config import Config, UserError
from lenshpc.config.schema import to_plain
from lenshpc.config.train import TARGETS, Job
from lenshpc.io import atomic_path
from lenshpc.train import data as D
from lenshpc.train.state import (Checkpoint, JobFiles, history_text, load_checkpoint,
                                 read_checkpoint_state, read_json, save_checkpoint,
                                 write_json, write_text_atomic)

EXIT_FINISHED = 0
#: Stopped by a signal after saving the last whole epoch; run the same command to resume.
EXIT_STOPPED = 75
#: Validation items whose predictions run.json records (reload check of model.keras).
N_SAMPLE_PREDICTIONS = 16


def say(*parts: Any) -> None:
    print(*parts, flush=True)


# --------------------------------------------------------------------------- plan (no TF)


def resume_key(cfg: Config, job: Job, dataset_checksum: str) -> dict[str, Any]:
    """Everything that decides what a job computes, by config path. A job directory
    started with another key cannot be continued (epochs and I/O settings may change)."""
    t = cfg.train
    return {
        "dataset checksum": dataset_checksum,
        "seed": cfg.seed,
        f"train.models[{job.model.name}]": {"p1": job.model.p1, "p2": job.model.p2},
        "fold": job.fold,
        "train.network": to_plain(t.network),
        "train.loss_weights": list(t.loss_weights),
        "train.standardize_targets": t.standardize_targets,
        "train.batch_size": t.batch_size,
        "train.learning_rate": t.learning_rate,
        "train.warmup_epochs": t.warmup_epochs,
        "train.early_stopping_patience": t.early_stopping_patience,
        "train.reduce_lr_factor": t.reduce_lr_factor,
        "train.reduce_lr_patience": t.reduce_lr_patience,
        "train.min_lr": t.min_lr,
    }


def key_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first entry where two resume keys differ, as a short phrase, or None."""
    for k in new:
        if old.get(k) != new[k]:
            return f"{k} was {old.get(k)!r}, now {new[k]!r}"
    return None


@dataclass
class JobPlan:
    """A checked job: what to train on, where, for how long, and from which state."""

    cfg: Config
    job: Job
    dataset: D.DatasetInfo
    files: JobFiles
    epochs: int
    train_items: np.ndarray
    val_items: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray
    key: dict[str, Any]
    resume: dict[str, Any] | None = None   # checkpoint bookkeeping, if there is one
    finished_note: str | None = None       # set when there is nothing left to do
    started: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return f"job {self.job.index} ({self.job.model.name}, fold {self.job.fold})"


def plan_job(cfg: Config, job: Job, data_dir: str | Path, runs: str | Path,
             epochs: int | None = None) -> JobPlan:
    """Check the inputs of one job and decide what to do; UserError on any problem.

    Reads only small things (labels, split, attributes, the job's JSON files), so every
    rank can run it before any collective call and reach the same verdict."""
    epochs = cfg.train.epochs if epochs is None else epochs
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {epochs}")
    dataset = D.open_dataset(data_dir, cfg)
    train_items, val_items = D.fold_items(dataset.split, job.fold)
    if len(train_items) == 0 or len(val_items) == 0:
        raise UserError(f"dataset {dataset.path}: fold {job.fold} leaves {len(train_items)} "
                        f"training and {len(val_items)} validation items")
    mean, std = D.target_stats(dataset.labels[train_items], cfg.train.standardize_targets)
    runs = Path(runs)
    if runs.exists() and not runs.is_dir():
        raise UserError(f"--out {runs} exists and is not a directory")
    files = JobFiles(runs / job.path)
    existing = next(p for p in (files.root, *files.root.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write to {existing} (for --out {runs})")
    key = resume_key(cfg, job, dataset.checksum)
    plan = JobPlan(cfg, job, dataset, files, epochs, train_items, val_items, mean, std, key)

    run_info = read_json(files.run_json)
    if files.checkpoint.exists():
        plan.resume = read_checkpoint_state(files.checkpoint)
        if plan.resume is None:
            raise UserError(f"{files.checkpoint} cannot be read; remove {files.root} to start "
                            f"the job again")
    elif run_info is not None and run_info.get("epochs_done", 0) > 0:
        raise UserError(f"{files.root} has a run.json but no checkpoint.npz; remove "
                        f"{files.root} to start the job again")
    if plan.resume is not None:
        diff = key_difference(plan.resume.get("key", {}), key)
        if diff:
            raise UserError(f"{files.root} was started with other settings ({diff}); use "
                            f"another --out or remove that directory")
        done = int(plan.resume["epochs_done"])
        finished = bool(run_info and run_info.get("finished")) and files.model.is_file()
        if finished and plan.resume.get("early_stopped"):
            plan.finished_note = (f"{plan.name} is finished: it stopped early after epoch "
                                  f"{done} (val_loss did not improve); nothing to do")
        elif finished and done >= epochs:
            plan.finished_note = (f"{plan.name} is finished ({done} epochs"
                                  f"{'' if done == epochs else f', more than --epochs {epochs}'})"
                                  f"; nothing to do")
    return plan


# --------------------------------------------------------------------------- signals


class StopRequest:
    """Remembers SIGTERM/SIGUSR1 (Slurm's warnings before a time limit or preemption).

    The handler only sets a flag; the training loop decides when to stop (between steps,
    agreed by all ranks), so a checkpoint is never left half-written."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal is not None


class Stopped(Exception):
    """Raised on every rank at the same step when any rank was asked to stop."""


# --------------------------------------------------------------------------- Horovod edge


def _init_horovod(threads_per_rank: int | None):
    """hvd.init(), GPU pinned by local rank, CPU threads shared by the node's ranks."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import horovod.tensorflow.keras as hvd
    # Keras times the first steps' callbacks, which include Horovod's one-off broadcast,
    # and then warns about "slow" callbacks; that warning would only mislead here.
    tf.get_logger().addFilter(
        lambda record: "is slow compared to the batch time" not in record.getMessage())
    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
    if threads_per_rank is None:
        avail = len(os.sched_getaffinity(0))
        # A launcher that binds each rank already gave it its own CPUs.
        bound = avail < (os.cpu_count() or avail)
        threads_per_rank = avail if bound else max(1, avail // hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads_per_rank)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads_per_rank)))
    return tf, hvd


def _versions() -> dict[str, str]:
    import h5py
    import horovod
    import tensorflow as tf
    return {"lenshpc": __version__, "tensorflow": tf.__version__, "horovod": horovod.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__,
            "python": platform.python_version()}


def _weights_sha256(weights: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- callbacks


def _callbacks(tf, hvd):
    """Callback classes (defined here so this module imports without TensorFlow)."""
    import horovod.tensorflow as hvd_tf

    class AverageBatchStatistics(tf.keras.callbacks.Callback):
        """Average the non-trainable weights (BatchNorm moving statistics) over the ranks
        before validation and at each epoch end: gradients are averaged by Horovod, these
        are not, and all ranks must end with identical weights."""

        def _sync(self) -> None:
            variables = self.model.non_trainable_weights
            if variables:
                values = hvd_tf.grouped_allreduce([v.value() for v in variables],
                                                  op=hvd_tf.Average)
                for v, value in zip(variables, values):
                    v.assign(value)

        def on_test_begin(self, logs=None):
            self._sync()

        def on_epoch_end(self, epoch, logs=None):
            self._sync()

    class Resumable:
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

        def state(self) -> dict:
            return {k: _finite(getattr(self, k)) if k == "best" else int(getattr(self, k))
                    for k in self.KEYS}

    class ResumableReduceLR(Resumable, tf.keras.callbacks.ReduceLROnPlateau):
        KEYS = ("wait", "cooldown_counter", "best")

    class ResumableEarlyStopping(Resumable, tf.keras.callbacks.EarlyStopping):
        # No restore_best_weights: the saved model is the last epoch's.
        KEYS = ("wait", "best", "best_epoch", "stopped_epoch")

    return AverageBatchStatistics, ResumableReduceLR, ResumableEarlyStopping


# --------------------------------------------------------------------------- the job


@dataclass
class Session:
    """Bookkeeping of this process' part of the job (what goes into checkpoint and run.json)."""

    state: dict[str, Any]
    n_ranks: int
    started: float

    @property
    def wall_time_s(self) -> float:
        return self.state.get("wall_time_before_s", 0.0) + (time.time() - self.started)


def run_job(plan: JobPlan, stop: StopRequest | None = None) -> int:
    """Train the planned job; 0 when finished, 75 when stopped by a signal (resumable)."""
    if plan.finished_note:
        from lenshpc.cli import world_rank
        if world_rank() == 0:
            say(plan.finished_note)
        return EXIT_FINISHED
    if stop is None:
        stop = StopRequest()
        stop.install()
    cfg, job, t = plan.cfg, plan.job, plan.cfg.train
    tf, hvd = _init_horovod(t.threads_per_rank)
    import horovod.tensorflow as hvd_tf
    rank, size = hvd.rank(), hvd.size()
    root = rank == 0

    # Checks that depend on the number of ranks: the same verdict on every rank.
    if len(plan.train_items) // size < 1:
        raise UserError(f"fold {job.fold} has {len(plan.train_items)} training items, fewer "
                        f"than the {size} ranks")
    if len(plan.val_items) < size:
        raise UserError(f"fold {job.fold} has {len(plan.val_items)} validation items, fewer "
                        f"than the {size} ranks")

    resume = plan.resume or {}
    first_epoch = int(resume.get("epochs_done", 0))
    early_stopped = bool(resume.get("early_stopped", False))
    block = t.read_block_mb << 20
    train_ids = D.rank_share(plan.train_items, rank, size)
    val_ids = D.rank_share(plan.val_items, rank, size)
    x_train, y_train = D.read_items(plan.dataset.path, train_ids, block)
    x_val, y_val = D.read_items(plan.dataset.path, val_ids, block)
    # A deleted or damaged shard reads as NaN through the virtual dataset.
    bad = int(not (np.isfinite(x_train).all() and np.isfinite(x_val).all()))
    if size > 1:
        bad = int(hvd_tf.allreduce(tf.constant(bad), op=hvd_tf.Sum, name="bad_input").numpy())
    if bad:
        raise UserError(f"dataset {plan.dataset.path}: some images read as NaN (a shard file "
                        f"is damaged or was replaced); simulate the dataset again")

    n_use = len(plan.train_items) // size
    batches = D.TrainBatches(x_train, y_train, train_ids, n_use=n_use, batch_size=t.batch_size,
                             seed=cfg.seed, fold=job.fold, n_items=plan.dataset.n_items,
                             first_epoch=first_epoch)
    train_ds = D.tf_dataset(batches, plan.dataset.image_shape, t.prefetch_batches)
    val_ds = D.tf_dataset(D.EvalBatches(x_val, y_val, t.batch_size), plan.dataset.image_shape,
                          t.prefetch_batches)
    steps = batches.steps
    images_per_epoch = n_use * size

    from lenshpc.train.model import build_model, inference_model, weighted_mse
    # Same initial weights on every rank and for every dropout model of a fold.
    tf.keras.utils.set_random_seed(int(np.random.default_rng([cfg.seed, job.fold])
                                       .integers(2**31 - 1)))
    model = build_model(t.network, job.model, cfg.image.size, plan.target_mean, plan.target_std)
    scaled_lr = t.learning_rate * size
    optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.legacy.Nadam(learning_rate=scaled_lr))
    model.compile(optimizer=optimizer, loss=weighted_mse(t.loss_weights, plan.target_std),
                  metrics=[tf.keras.metrics.MeanAbsoluteError(name="mae")])

    if plan.resume is not None:
        ckpt = load_checkpoint(plan.files.checkpoint)
        model.set_weights(ckpt.model)
        optimizer._create_all_weights(model.trainable_variables)  # slots exist before set
        optimizer.set_weights(ckpt.optimizer)
        tf.keras.backend.set_value(optimizer.lr, scaled_lr * float(ckpt.state["lr_factor"]))
        state = ckpt.state
        if root:
            say(f"{plan.name}: resuming after epoch {first_epoch} on {size} rank(s)")
    else:
        state = {"key": plan.key, "epochs_done": 0, "history": [], "lr_factor": 1.0,
                 "early_stopped": False, "callbacks": {}, "epoch_seconds": [], "train_seconds": [],
                 "images_trained": 0, "wall_time_before_s": 0.0, "sessions": []}
        if root:
            say(f"{plan.name}: training {len(plan.train_items)} items, validating on "
                f"{len(plan.val_items)}, {size} rank(s), {steps} steps of <= {t.batch_size} "
                f"per rank and epoch")
    session = Session(state, size, plan.started)
    state["sessions"] = [*state.get("sessions", []), {"n_ranks": size, "first_epoch": first_epoch}]

    AverageBatchStatistics, ResumableReduceLR, ResumableEarlyStopping = _callbacks(tf, hvd)
    reduce_lr = ResumableReduceLR(restore=state["callbacks"].get("reduce_lr"), monitor="val_loss",
                                  factor=t.reduce_lr_factor, patience=t.reduce_lr_patience,
                                  min_lr=t.min_lr, verbose=0)
    early = (ResumableEarlyStopping(restore=state["callbacks"].get("early_stopping"),
                                    monitor="val_loss", patience=t.early_stopping_patience)
             if t.early_stopping_patience > 0 else None)

    def write_products(finished: bool, extra: dict[str, Any] | None = None) -> None:
        plan.files.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(plan.files.history, history_text(state["history"]))
        write_json(plan.files.run_json, run_record(plan, state, session, finished, extra))

    class EpochLearningRate(tf.keras.callbacks.Callback):
        """The learning rate the epoch ended with, read before ReduceLROnPlateau changes it."""

        def on_epoch_end(self, epoch, logs=None):
            self.lr = float(tf.keras.backend.get_value(optimizer.lr))

    class Bookkeeper(tf.keras.callbacks.Callback):
        """Epoch end, after the callbacks that change state: checkpoint, history, run.json
        (rank 0); then the stop check. After each step: the agreed stop check."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = self.t_val = time.time()
            self.cpu0 = self.cpu_val = time.process_time()

        def on_test_begin(self, logs=None):
            self.t_val, self.cpu_val = time.time(), time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            # Alone, the check is a flag lookup; with several ranks it is an allreduce.
            if size == 1 or (batch + 1) % t.stop_check_steps == 0:
                self._check_stop()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in
                                          ("loss", "val_loss", "mae", "val_mae")}, "lr": lr_used.lr}
            state["history"] = [*state["history"], row]
            state["epochs_done"] = epoch + 1
            state["lr_factor"] = float(tf.keras.backend.get_value(optimizer.lr)) / scaled_lr
            state["callbacks"] = {"reduce_lr": reduce_lr.state(),
                                  **({"early_stopping": early.state()} if early else {})}
            state["early_stopped"] = bool(self.model.stop_training) and epoch + 1 < plan.epochs
            state["epoch_seconds"] = [*state["epoch_seconds"], time.time() - self.t0]
            state["train_seconds"] = [*state.get("train_seconds", []), self.t_val - self.t0]
            state["train_cpu_seconds"] = [*state.get("train_cpu_seconds", []),
                                          self.cpu_val - self.cpu0]
            state["images_trained"] += images_per_epoch
            state["epoch_images"] = [*state.get("epoch_images", []), images_per_epoch]
            if root:
                plan.files.root.mkdir(parents=True, exist_ok=True)
                # The session's time so far is counted in the checkpoint, so a resumed
                # job reports the wall time of all its sessions.
                saved = dict(state, wall_time_before_s=session.wall_time_s)
                save_checkpoint(plan.files.checkpoint,
                                Checkpoint(model.get_weights(), optimizer.get_weights(), saved))
                write_products(False)
                say(f"epoch {epoch + 1}/{plan.epochs}  loss {row['loss']:.4g}  val_loss "
                    f"{row['val_loss']:.4g}  mae {row['mae']:.4g}  val_mae {row['val_mae']:.4g}  "
                    f"lr {row['lr']:.3g}  {images_per_epoch / state['epoch_seconds'][-1]:.0f} img/s")
            if epoch + 1 < plan.epochs and not self.model.stop_training:
                self._check_stop()

        def _check_stop(self) -> None:
            asked = int(stop.requested)
            if size > 1:
                asked = int(hvd_tf.allreduce(tf.constant(asked), op=hvd_tf.Sum,
                                             name="stop").numpy())
            if asked:
                raise Stopped()

    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0)]
    if size > 1:
        callbacks.append(AverageBatchStatistics())
    callbacks.append(hvd.callbacks.MetricAverageCallback())
    if size > 1 and t.warmup_epochs > 0:
        callbacks.append(hvd.callbacks.LearningRateWarmupCallback(
            initial_lr=scaled_lr, warmup_epochs=t.warmup_epochs, steps_per_epoch=steps,
            momentum_correction=False))
    lr_used = EpochLearningRate()
    callbacks += [lr_used, reduce_lr]
    if early is not None:
        callbacks.append(early)
    if root and t.tensorboard:
        callbacks.append(tf.keras.callbacks.TensorBoard(str(plan.files.logs), write_graph=False,
                                                        profile_batch=0))
    callbacks.append(Bookkeeper())

    if first_epoch < plan.epochs and not early_stopped:
        try:
            model.fit(train_ds, epochs=plan.epochs, initial_epoch=first_epoch,
                      steps_per_epoch=steps, validation_data=val_ds, callbacks=callbacks,
                      verbose=0)
        except Stopped:
            if root:
                say(f"{plan.name}: stopped by {stop.signal or 'a signal on another rank'}; "
                    f"{state['epochs_done']} whole epoch(s) saved in {plan.files.checkpoint}; "
                    f"run the same command to continue")
            return EXIT_STOPPED

    # Finished: all ranks hold the same weights (gradients and BatchNorm statistics are
    # averaged); record each rank's checksum so that can be checked.
    digests = [_weights_sha256(model.get_weights())]
    if size > 1:
        digests = hvd_tf.allgather_object(digests[0], name="weights_sha256")
    if root:
        keep = min(N_SAMPLE_PREDICTIONS, len(val_ids))
        predicted = model(x_val[:keep], training=False).numpy().astype(np.float64)
        final = inference_model(model)
        with atomic_path(plan.files.model) as tmp:
            final.save(tmp)
        write_products(True, {"weights_sha256": list(digests),
                              "sample_predictions": {"index": [int(i) for i in val_ids[:keep]],
                                                     "values": predicted.tolist()}})
        say(f"{plan.name}: finished after {state['epochs_done']} epoch(s)"
            f"{' (early stop)' if state['early_stopped'] else ''}; model in {plan.files.model}")
    return EXIT_FINISHED


def run_record(plan: JobPlan, state: dict[str, Any], session: Session, finished: bool,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of run.json (see docs: the contract with evaluate)."""
    t = plan.cfg.train
    seconds = sum(state["epoch_seconds"])
    last = state["history"][-1] if state["history"] else {}
    record = {
        "finished": finished,
        "model": plan.job.model.name,
        "fold": plan.job.fold,
        "job": plan.job.index,
        "p1": plan.job.model.p1,
        "p2": plan.job.model.p2,
        "epochs": plan.epochs,
        "epochs_done": state["epochs_done"],
        "early_stopped": state["early_stopped"],
        "final": {k: last.get(k) for k in ("loss", "val_loss", "mae", "val_mae", "lr")},
        "metrics_note": "loss: weighted MSE of standardised targets; mae: mean absolute error "
                        "over theta_E (arcsec), q, e1, e2 in physical units",
        "dataset": str(plan.dataset.path.parent.resolve()),
        "dataset_checksum": plan.dataset.checksum,
        "n_train": int(len(plan.train_items)),
        "n_val": int(len(plan.val_items)),
        "targets": list(TARGETS),
        "target_mean": [float(v) for v in plan.target_mean],
        "target_std": [float(v) for v in plan.target_std],
        "loss_weights": list(t.loss_weights),
        "batch_size_per_rank": t.batch_size,
        "learning_rate": t.learning_rate * session.n_ranks,
        "n_ranks": session.n_ranks,
        "sessions": state["sessions"],
        "wall_time_s": round(session.wall_time_s, 3),
        "train_time_s": round(seconds, 3),
        "images_per_s": round(state["images_trained"] / seconds, 2) if seconds else None,
        "timing": {"note": "per epoch: training images (all ranks), seconds of the whole epoch "
                           "(training, validation, checkpoint) and of its training phase, CPU "
                           "seconds of rank 0's process in the training phase",
                   "images": state.get("epoch_images", []),
                   "epoch_s": [round(v, 4) for v in state["epoch_seconds"]],
                   "train_s": [round(v, 4) for v in state.get("train_seconds", [])],
                   "train_cpu_s": [round(v, 4) for v in state.get("train_cpu_seconds", [])]},
        "config": plan.cfg.to_yaml_text(),
        "versions": _versions(),
        "command": " ".join(sys.argv),
    }
    record.update(extra or {})
    return record
