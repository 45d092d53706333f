"""The train driver: one job (dropout model x fold) as one process or N Horovod ranks.

It reads top to bottom like Horovod's Keras example:

1. :func:`lenshpc.train.plan.plan_job` (every rank, before TensorFlow starts): rank 0 takes the job folder's
   lock; the config, dataset, fold and job folder are checked with numpy and h5py only,
   and the checkpoint (if any) is read once. A problem is one :class:`UserError` line.
2. :func:`run_job`: ``hvd.init()``, device pinned by local rank (and checked: a job given
   GPUs never falls back to the CPU silently); the ranks agree on the plan; each rank
   reads its own part of the fold (:func:`_inputs`: in memory or streamed from its
   shards, on a GPU held there or prefetched to it); model (same seed everywhere; dropout
   drawn from generators whose state is checkpointed) in the configured precision,
   optimizer scaled by the number of ranks, compiled with ``steps_per_execution`` and
   XLA as the device suggests (:func:`_compile`), restored from the checkpoint; callbacks
   in Horovod's order; ``fit``; rank 0 saves model.keras (float32, the best epoch's
   weights by default) and, last, the completion marker.
3. SIGTERM/SIGUSR1 set a flag; the ranks agree on it every ``train.stop_check_steps``
   steps (every call into TensorFlow alone, so at most ``steps_per_execution`` steps
   late) and stop together, abandoning the unfinished epoch (the last whole epoch is on
   disk): exit 75.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from lenshpc.config import UserError
from lenshpc.lock import clear_done
from lenshpc.parallel import EXIT_STOPPED, World
from lenshpc.train import data
from lenshpc.train.plan import JobPlan, launcher_rank
from lenshpc.train.preprocess import normalize
from lenshpc.train.process import HorovodComm, StopRequest, init_horovod, memory_limit_bytes
from lenshpc.train.state import (
    JobFiles,
    TrainState,
)

EXIT_FINISHED = 0
#: Validation items whose predictions run.json records (reload check of model.keras).
N_SAMPLE_PREDICTIONS = 16


def say(*parts: Any) -> None:
    print(*parts, flush=True)


# --------------------------------------------------------------------------- the job


@dataclass
class Inputs:
    """A rank's training and validation datasets and how they were made."""

    train: Any
    val: Any
    steps: int
    mode: str                  # memory or stream
    placement: str             # host, device (held on the GPU) or prefetch (to the GPU)
    reason: str
    val_ids: np.ndarray
    sample: np.ndarray         # validation images whose predictions run.json records


def _inputs(plan: JobPlan, world: World, local_size: int, device: dict[str, Any],
            first_epoch: int) -> Inputs:
    """This rank's share of the fold as tf.data datasets, in memory or streamed
    (train.input), and on a GPU held there or prefetched to it."""
    from lenshpc.train import stream
    from lenshpc.train.device import choose_input, place_share
    cfg, t = plan.cfg, plan.cfg.train
    rank, size = world.rank, world.size
    train_ids = data.rank_share(plan.train_items, rank, size)
    val_ids = data.rank_share(plan.val_items, rank, size)
    h, w = plan.dataset.image_shape
    share_bytes = (len(train_ids) + len(val_ids)) * h * w * 4
    mode, reason = choose_input(t.input, share_bytes, local_size, memory_limit_bytes(),
                                t.memory_fraction)
    n_use = len(plan.train_items) // size
    n_sample = min(N_SAMPLE_PREDICTIONS, len(val_ids))
    gpu = "/gpu:0" if device["device"] == "gpu" else None
    val_steps = -(-len(val_ids) // t.batch_size)
    if mode == "stream" and t.shuffle == "buffer":
        raise UserError(f"train.shuffle: buffer needs the share in memory, but train.input "
                        f"{t.input} streams it ({reason}); use train.shuffle: global or more "
                        f"memory (train.memory_fraction)")
    if mode == "stream":
        batches: Any = stream.StreamBatches(
            plan.dataset, train_ids, n_use=n_use, batch_size=t.batch_size, seed=cfg.seed,
            fold=plan.job.fold, buffer=t.shuffle_buffer, shards_at_once=t.stream_shards,
            first_epoch=first_epoch, normalize=t.normalize)
        train = data.tf_dataset(batches, (h, w), t.prefetch_batches, gpu)
        val = data.tf_dataset(stream.StreamEval(plan.dataset, val_ids, t.batch_size,
                                                normalize=t.normalize), (h, w),
                              t.prefetch_batches, n_batches=val_steps)
        sample = normalize(data.read_items(plan.dataset, val_ids[:n_sample])[0], t.normalize)
        return Inputs(train, val, batches.steps, mode, "prefetch" if gpu else "host", reason,
                      val_ids, sample)
    block = t.read_block_mb << 20
    x_train, y_train = data.read_items(plan.dataset, train_ids, block)
    x_val, y_val = data.read_items(plan.dataset, val_ids, block)
    # Shards are checked as they are read; this is the last guard before training.
    finite = np.isfinite(x_train).all() and np.isfinite(x_val).all()
    world.agree([] if finite else [f"dataset {plan.dataset.path}: some images read as NaN (a "
                                   f"shard file is damaged or was replaced); run lenshpc "
                                   f"dataset verify"])
    normalize(x_train, t.normalize, out=x_train)
    normalize(x_val, t.normalize, out=x_val)
    buffer = ((data.file_order(plan.dataset.split, plan.job.fold), t.shuffle_buffer)
              if t.shuffle == "buffer" else None)
    batches = data.TrainBatches(x_train, y_train, train_ids, n_use=n_use,
                                batch_size=t.batch_size, seed=cfg.seed, fold=plan.job.fold,
                                n_items=plan.dataset.n_items, first_epoch=first_epoch,
                                buffer=buffer)
    placement = "host"
    if gpu:
        placement = place_share(x_train.nbytes + y_train.nbytes, device.get("memory_bytes"))
    # Each batch is one gather inside TensorFlow from the share held on the GPU (when it
    # fits) or on the host (then copied to the GPU, if any, ahead of the step).
    train = data.tf_resident_dataset(batches, t.prefetch_batches,
                                     hold=gpu if gpu and placement == "device" else "/cpu:0",
                                     to=gpu)
    val = data.tf_dataset(data.EvalBatches(x_val, y_val, t.batch_size), (h, w),
                          t.prefetch_batches, n_batches=val_steps)
    return Inputs(train, val, batches.steps, mode, placement, reason, val_ids,
                  x_val[:n_sample])


def _compile(plan: JobPlan, size: int, device: dict[str, Any], steps: int, tf, hvd):
    """The network and its optimizer, compiled. Returns (model, the optimizer whose
    learning rate and weights are the job's, scaled learning rate, settings in force)."""
    from lenshpc.train.device import default_steps_per_execution, use_jit
    from lenshpc.train.model import build_model, set_precision, use_generator_rng, weighted_mse
    cfg, job, t = plan.cfg, plan.job, plan.cfg.train
    jit = use_jit(t.jit_compile, device["device"])
    if jit and size > 1 and device["device"] != "gpu":
        raise UserError("train.jit_compile: true needs a GPU with several ranks (Horovod's "
                        "allreduce has XLA operations on GPUs only); set it to null or false")
    set_precision(t.precision)
    use_generator_rng()
    tf.keras.utils.set_random_seed(int(np.random.default_rng([cfg.seed, job.fold])
                                       .integers(2**31 - 1)))
    model = build_model(t.network, job.model, cfg.image.size, plan.target_mean, plan.target_std)
    scaled_lr = t.learning_rate * size
    optimizer = tf.keras.optimizers.legacy.Nadam(learning_rate=scaled_lr)
    if not (jit and size == 1):
        # One rank has nothing to average; Horovod's allreduce (an identity there) would
        # only keep XLA from compiling the step.
        optimizer = hvd.DistributedOptimizer(optimizer)
    spe = min(t.steps_per_execution or default_steps_per_execution(device["device"]), steps)
    # In mixed_float16 Keras wraps the optimizer in its LossScaleOptimizer. Horovod's
    # allreduce runs inside the inner optimizer's gradient computation, before the loss
    # scale's finiteness check, so every rank sees the same averaged gradients and all
    # skip (or all apply) the same steps.
    model.compile(optimizer=optimizer, loss=weighted_mse(t.loss_weights, plan.target_std),
                  metrics=[tf.keras.metrics.MeanAbsoluteError(name="mae")],
                  steps_per_execution=spe, jit_compile=jit)
    settings = {"precision": t.precision, "jit_compile": jit, "steps_per_execution": spe}
    return model, optimizer, scaled_lr, settings


def _optimizer_state(model, optimizer) -> list[np.ndarray]:
    """The optimizer's weights, and in mixed precision the loss scale and its counter."""
    weights = optimizer.get_weights()
    outer = model.optimizer
    if outer is not optimizer:
        weights += [np.asarray(outer.loss_scale.numpy()),
                    np.asarray(outer.dynamic_counter.numpy())]
    return weights


def _set_optimizer_state(model, optimizer, weights: list[np.ndarray]) -> None:
    outer = model.optimizer
    optimizer._create_all_weights(model.trainable_variables)  # slots exist before set
    if outer is not optimizer:
        *weights, scale, counter = weights
        outer._loss_scale._current_loss_scale.assign(scale)
        outer.dynamic_counter.assign(counter)
    optimizer.set_weights(weights)


def _final_model(plan: JobPlan, model):
    """The network without optimizer or loss, computing in float32 whatever the training
    precision: what model.keras holds."""
    from lenshpc.train.model import build_model, inference_model, set_precision
    if plan.cfg.train.precision == "float32":
        return inference_model(model)
    set_precision("float32")
    final = build_model(plan.cfg.train.network, plan.job.model, plan.cfg.image.size,
                        plan.target_mean, plan.target_std)
    final.set_weights(model.get_weights())
    return final


def _callbacks(plan: JobPlan, state: TrainState, model, optimizer, scaled_lr: float,
               steps: int, stop: StopRequest, size: int, root: bool, tf, hvd, hvd_tf):
    """The fit's callbacks in Horovod's order (broadcast, metric average, then those
    reading metrics; the epoch-end bookkeeping and the stop check last) and the Recorder."""
    from lenshpc.train import callbacks as cb
    from lenshpc.train.model import rng_states
    from lenshpc.train.record import Recorder
    t, ckpt = plan.cfg.train, plan.checkpoint
    # Horovod's broadcast runs after the first step and also overwrites the other ranks'
    # BatchNorm statistics with rank 0's. A new job needs it once (epoch 1); a resumed job
    # starts from the same checkpoint on every rank, so it is left out: broadcasting again
    # after the first resumed step would make the statistics, hence val_loss, differ from
    # an uninterrupted run.
    callbacks = [] if ckpt is not None else [hvd.callbacks.BroadcastGlobalVariablesCallback(0)]
    if size > 1:
        callbacks.append(cb.AverageBatchStatistics(
            lambda values: hvd_tf.grouped_allreduce(values, op=hvd_tf.Average)))
    callbacks.append(hvd.callbacks.MetricAverageCallback())
    if size > 1 and t.warmup_epochs > 0:
        callbacks.append(hvd.callbacks.LearningRateWarmupCallback(
            initial_lr=scaled_lr, warmup_epochs=t.warmup_epochs, steps_per_epoch=steps,
            momentum_correction=False))
    timer, lr_used = cb.EpochTimer(), cb.EpochLearningRate(optimizer)
    reduce_lr = cb.ResumableReduceLR(restore=state.callbacks.get("reduce_lr"), monitor="val_loss",
                                    factor=t.reduce_lr_factor, patience=t.reduce_lr_patience,
                                    min_lr=t.min_lr, verbose=0)
    early = (cb.ResumableEarlyStopping(restore=state.callbacks.get("early_stopping"),
                                      monitor="val_loss", patience=t.early_stopping_patience)
             if t.early_stopping_patience > 0 else None)
    n_use = len(plan.train_items) // size
    recorder = Recorder(
        plan, state, model=model, optimizer=optimizer, scaled_lr=scaled_lr, n_ranks=size,
        root=root, images_per_epoch=n_use * size, best_weights=ckpt.best if ckpt else None,
        timer=timer, lr_of_epoch=lambda: lr_used.lr, rng_states=lambda: rng_states(model),
        optimizer_state=lambda: _optimizer_state(model, optimizer),
        callback_states=lambda: {"reduce_lr": reduce_lr.state(),
                                 **({"early_stopping": early.state()} if early else {})})
    agree = (lambda flag: int(hvd_tf.allreduce(tf.constant(flag), op=hvd_tf.Sum,
                                               name="stop").numpy())) if size > 1 else int
    callbacks += [timer, lr_used, reduce_lr, *([early] if early else [])]
    if root and t.tensorboard:
        callbacks.append(tf.keras.callbacks.TensorBoard(str(plan.files.logs), write_graph=False,
                                                        profile_batch=0))
    callbacks += [cb.EpochEnd(recorder.epoch_end),
                  cb.StopCheck(lambda: stop.requested, agree,
                              every=1 if size == 1 else t.stop_check_steps,
                              last_epoch=plan.epochs)]
    return callbacks, recorder


def run_job(plan: JobPlan, stop: StopRequest | None = None) -> int:
    """Train the planned job; 0 when finished, 75 when stopped by a signal (resumable)."""
    if plan.finished_note and plan.refusal is None:
        if launcher_rank() == 0:
            say(plan.finished_note)
        return EXIT_FINISHED
    stop = stop or StopRequest().install()
    t = plan.cfg.train

    # 1. Horovod, device, and one verdict on the plan for all ranks.
    tf, hvd, device, problem = init_horovod(t.threads_per_rank, t.device, t.jit_compile)
    import horovod.tensorflow as hvd_tf
    rank, size = hvd.rank(), hvd.size()
    root = rank == 0
    world = World(rank, size, HorovodComm(hvd_tf) if size > 1 else None)
    world.agree(_verdict(plan, problem, size), tally=False)
    if root:
        clear_done(plan.files.root, JobFiles.PRODUCT)

    # 2. Data: this rank's share of the fold, in memory or streamed from its shards.
    ckpt = plan.checkpoint
    first_epoch = ckpt.state.epochs_done if ckpt else 0
    inputs = _inputs(plan, world, hvd.local_size(), device, first_epoch)

    # 3. Model (the same initial weights on every rank and for every dropout model of a
    # fold; dropout from generators whose state is checkpointed) and optimizer (learning
    # rate scaled by the number of ranks, gradients averaged).
    model, optimizer, scaled_lr, settings = _compile(plan, size, device, inputs.steps, tf, hvd)
    device = {**device, "input": inputs.mode, "placement": inputs.placement, **settings}
    plan.devices = world.allgather(device)

    # 4. State: a new job, or the checkpoint's (weights, optimizer, dropout generators).
    from lenshpc.train.model import set_rng_states
    if ckpt is not None:
        model.set_weights(ckpt.model)
        _set_optimizer_state(model, optimizer, ckpt.optimizer)
        set_rng_states(model, ckpt.rng)
        tf.keras.backend.set_value(optimizer.lr, scaled_lr * ckpt.state.lr_factor)
        state = ckpt.state
        if root:
            say(f"{plan.name}: resuming after epoch {first_epoch} on {size} rank(s)")
            before = state.sessions[-1]["n_ranks"] if state.sessions else None
            if before is not None and before != size:
                # Each rank's share and the order of the summed gradients depend on the
                # rank count: the same job, not the same bits.
                say(f"{plan.name}: the checkpoint was written on {before} rank(s), this run "
                    f"has {size}: the continuation is valid but not bit-identical to an "
                    f"uninterrupted run on {before}")
    else:
        state = TrainState(key=plan.key)
        if root:
            say(f"{plan.name}: training {len(plan.train_items)} items, validating on "
                f"{len(plan.val_items)}, {size} rank(s) on {device['name']}, {inputs.steps} "
                f"steps of <= {t.batch_size} per rank and epoch; input {inputs.mode} "
                f"({inputs.reason}), {settings['precision']}, "
                f"{settings['steps_per_execution']} step(s) per execution"
                f"{', XLA' if settings['jit_compile'] else ''}")
    state.sessions = [*state.sessions, {"n_ranks": size, "first_epoch": first_epoch}]

    # 5. Callbacks, in Horovod's order: broadcast, metric average, then those reading metrics.
    from lenshpc.train import callbacks as cb
    callbacks, recorder = _callbacks(plan, state, model, optimizer, scaled_lr, inputs.steps,
                                     stop, size, root, tf, hvd, hvd_tf)

    # 6. Fit, from the first epoch not yet done.
    if first_epoch < plan.epochs and not state.early_stopped:
        try:
            with _disk_full_is_one_line(plan, model):
                model.fit(inputs.train, epochs=plan.epochs, initial_epoch=first_epoch,
                          steps_per_epoch=inputs.steps, validation_data=inputs.val,
                          callbacks=callbacks, verbose=0)
        except cb.Stopped:
            if root:
                say(f"{plan.name}: stopped by {stop.signal or 'a signal on another rank'}; "
                    f"{state.epochs_done} whole epoch(s) saved in {plan.files.checkpoint}; "
                    f"run the same command to continue")
            return EXIT_STOPPED
        except tf.errors.OpError as exc:
            # A shard that fails its checks while streamed: the reader's one line.
            line = next((ln for ln in str(exc).splitlines() if "lenshpc dataset verify" in ln),
                        None)
            if line is None:
                raise
            raise UserError(line.split("Error: ", 1)[-1].strip()) from None
    if state.best is None:
        raise UserError(f"{plan.name}: val_loss was never finite (training diverged); lower "
                        f"train.learning_rate, then remove {plan.files.root} and train again")

    # 7. Save (rank 0): every rank holds the same weights; their checksums show it.
    from lenshpc.train.state import weights_sha256
    digests = world.allgather(weights_sha256(model.get_weights()))
    if root:
        with _disk_full_is_one_line(plan, model):
            recorder.finish(_final_model(plan, model), digests, inputs.sample,
                            inputs.val_ids, N_SAMPLE_PREDICTIONS)
        best = state.best
        say(f"{plan.name}: finished after {state.epochs_done} epoch(s)"
            f"{' (early stop)' if state.early_stopped else ''}; best epoch {best['epoch']} "
            f"(val_loss {best['val_loss']:.4g}); model ({t.keep}) in {plan.files.model}")
    return EXIT_FINISHED


@contextlib.contextmanager
def _disk_full_is_one_line(plan: JobPlan, model):
    """A full disk while writing the job's files: one line naming the folder and about
    how many bytes a checkpoint needs (weights, optimizer slots, best weights); the last
    whole epoch stays on disk, so a rerun after freeing space resumes from it."""
    from lenshpc.io import free_bytes, human_bytes, is_disk_full
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        need = 5 * sum(int(np.prod(w.shape)) * 4 for w in model.weights)
        raise UserError(f"disk full writing {plan.files.root}: a checkpoint and the model "
                        f"need about {human_bytes(need)}, {human_bytes(free_bytes(plan.files.root))}"
                        f" free; free space and run the same command to resume from the last "
                        f"whole epoch") from None


def _verdict(plan: JobPlan, problem: str | None, size: int) -> list[str]:
    """This rank's say on the plan (rank 0's lock, every rank's device, the rank count):
    its first problem, if any, for :meth:`World.agree`."""
    job = plan.job
    reasons = [r for r in (plan.refusal, problem) if r]
    if len(plan.train_items) // size < 1:
        reasons.append(f"fold {job.fold} has {len(plan.train_items)} training items, fewer "
                       f"than the {size} ranks")
    if len(plan.val_items) < size:
        reasons.append(f"fold {job.fold} has {len(plan.val_items)} validation items, fewer "
                       f"than the {size} ranks")
    return reasons[:1]
