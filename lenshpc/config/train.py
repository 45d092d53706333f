"""Config section of the train stage: network, optimiser and the experiment grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lenshpc.config.schema import UserError, param

#: Network outputs, in this order (docs/method.md section 2).
TARGETS = ("theta_E", "q", "e1", "e2")


@dataclass(frozen=True)
class DropoutModel:
    """One dropout configuration of the experiment (p1 after Dense 512, p2 after Dense 1024)."""

    name: str = param(doc="Model name, e.g. model1 (used in paths: RUNS/<name>/fold-<k>); "
                      "1 to 64 ASCII letters, digits, '-' or '_'.",
                      check=lambda s: None if 0 < len(s) <= 64 and s.isascii()
                      and s.replace("-", "").replace("_", "").isalnum()
                      else "must be 1 to 64 ASCII letters, digits, '-' or '_'")
    p1: float = param(0.0, ge=0, lt=1, doc="Dropout rate after the first dense layer.")
    p2: float = param(0.0, ge=0, lt=1, doc="Dropout rate after the second dense layer.")


@dataclass(frozen=True)
class Network:
    """The modified AlexNet of docs/method.md section 2 (widths and kernels configurable)."""

    conv1_filters: int = param(128, ge=1, le=8192, doc="Block 1 filters.")
    conv1_kernel: int = param(11, ge=1, le=64, unit="pixels", doc="Block 1 kernel size, 11 "
                              "(assumed).")
    conv1_stride: int = param(2, ge=1, le=64, doc="Block 1 stride.")
    conv2_filters: int = param(256, ge=1, le=8192, doc="Block 2 filters.")
    conv2_kernel: int = param(5, ge=1, le=64, unit="pixels", doc="Block 2 kernel size, 5 "
                              "(assumed).")
    conv2_stride: int = param(3, ge=1, le=64, doc="Block 2 stride.")
    conv3_filters: int = param(256, ge=1, le=8192, doc="Block 3 filters (each of its conv layers).")
    conv3_layers: int = param(4, ge=1, le=64, doc="Block 3 number of 3x3 conv layers.")
    conv3_kernel: int = param(3, ge=1, le=64, unit="pixels", doc="Block 3 kernel size.")
    pool_size: int = param(2, ge=1, le=64, unit="pixels", doc="Max-pool size and stride "
                           "(assumed).")
    batch_norm: bool = param(True, doc="BatchNorm after every conv layer; the study has it in "
                             "blocks 1 and 2, in block 3 (assumed).")
    batch_norm_momentum: float = param(0.99, gt=0, lt=1, doc="Momentum of the BatchNorm moving "
                                       "statistics used at inference (lower adapts in fewer "
                                       "steps); Keras' default (assumed).")
    dense1: int = param(512, ge=1, le=65536, doc="Units of the first dense layer.")
    dense2: int = param(1024, ge=1, le=65536, doc="Units of the second dense layer.")


@dataclass(frozen=True)
class Train:
    """Training: the experiment grid (dropout models x folds), loss, optimiser, schedule."""

    models: tuple[DropoutModel, ...] = param(
        (DropoutModel("model1", 0.2, 0.3), DropoutModel("model2", 0.2, 0.2),
         DropoutModel("model3", 0.0, 0.0)),
        doc="Dropout configurations; jobs are numbered model-major: J = model_index * n_folds + fold.")
    network: Network = param(default_factory=Network, doc="Network shape.")
    loss_weights: tuple[float, float, float, float] = param(
        (1.0, 1.0, 3.0, 3.0), ge=0, le=1000, doc="Weights of the MSE terms of theta_E, q, e1, e2.")
    standardize_targets: bool = param(True, doc="Standardise targets with training-fold "
                                      "statistics; predictions are mapped back before any "
                                      "metric (assumed).")
    batch_size: int = param(64, ge=1, le=65536, doc="Batch size per rank, 64 (assumed).")
    epochs: int = param(100, ge=1, le=100_000, doc="Maximum number of epochs, 100 (assumed).")
    learning_rate: float = param(1e-3, gt=0, le=10, doc="Initial NAdam learning rate (single "
                                 "rank; scaled by the number of ranks), 1e-3 (assumed).")
    warmup_epochs: int = param(1, ge=0, le=1000, doc="Epochs of linear learning-rate warm-up to "
                               "the scaled rate (Horovod's practice; not in the study) "
                               "(assumed).")
    early_stopping_patience: int = param(15, ge=0, le=100_000, doc="Epochs without val_loss "
                                         "improvement before stopping (0: never stop early), 15 "
                                         "(assumed).")
    reduce_lr_factor: float = param(0.5, gt=0, lt=1, doc="ReduceLROnPlateau factor, 0.5 "
                                   "(assumed).")
    reduce_lr_patience: int = param(5, ge=0, le=100_000, doc="ReduceLROnPlateau patience "
                                 "(epochs), 5 (assumed).")
    min_lr: float = param(1e-6, ge=0, le=10, doc="ReduceLROnPlateau lower bound, 1e-6 "
                       "(assumed).")
    read_block_mb: int = param(256, ge=1, le=65536, unit="MiB", doc="Size of one contiguous HDF5 read when "
                               "a rank loads its share of the fold into memory.")
    prefetch_batches: int = param(4, ge=1, le=1024, doc="Batches prepared ahead of the training step.")
    threads_per_rank: int | None = param(None, ge=1, le=4096, doc="TensorFlow intra-op threads per rank "
                                         "(null: the rank's CPUs, shared among the ranks of a node).")
    stop_check_steps: int = param(10, ge=1, le=1_000_000, doc="With several ranks: every this many steps the "
                                  "ranks agree (one small allreduce) whether SIGTERM/SIGUSR1 arrived; "
                                  "one rank checks after every step.")
    device: Literal["auto", "gpu", "cpu"] = param("auto", doc="Device of each rank. auto: a GPU "
                                                  "when the job was given GPUs (Slurm GPU "
                                                  "variables or CUDA_VISIBLE_DEVICES), and then "
                                                  "no visible GPU is an error; gpu: always "
                                                  "require one; cpu: never use one.")
    steps_per_execution: int | None = param(None, ge=1, le=1024, doc="Training steps run per "
                                            "call into TensorFlow; per-batch Python work (the "
                                            "stop check) runs once per call (null: 1 on CPU, "
                                            "32 on GPU).")
    precision: Literal["float32", "mixed_float16"] = param(
        "float32", doc="Arithmetic of the training step. mixed_float16: layers compute in "
        "float16 with float32 weights, the output layers and the loss stay float32, and the "
        "loss is scaled dynamically (Keras' LossScaleOptimizer around Horovod's); fast on "
        "GPUs with tensor cores, slow on CPUs.")
    jit_compile: bool | None = param(None, doc="Compile the training step with XLA (null: on "
                                     "for a GPU, off for the CPU). With several ranks it "
                                     "needs Horovod's XLA operations (GPU only).")
    input: Literal["auto", "memory", "stream"] = param(
        "auto", doc="How a rank reads its share of the fold. memory: read it whole before "
        "training; stream: read its shards during training through a shuffle buffer "
        "(memory holds the buffer, not the share); auto: memory when the shares of the "
        "node's ranks fit in train.memory_fraction of the node's memory, else stream.")
    memory_fraction: float = param(0.5, gt=0, le=1, doc="Fraction of the node's memory (or of "
                                   "a lower cgroup or address-space limit) that the ranks' "
                                   "in-memory shares may take in train.input: auto.")
    shuffle_buffer: int = param(4096, ge=1, le=10_000_000, doc="Items in a streaming rank's "
                                "shuffle buffer (train.input: stream).")
    stream_shards: int = param(4, ge=1, le=1024, doc="Shards a streaming rank reads at a time, "
                               "interleaved item block by item block (train.input: stream).")
    keep: Literal["best", "last"] = param("best", doc="Which epoch's weights model.keras holds: "
                                          "the lowest val_loss (best, as the study scores) or the "
                                          "last epoch trained.")
    tensorboard: bool = param(True, doc="Write TensorBoard logs (rank 0) to RUNS/<model>/fold-<k>/logs.")

    def validate(self, path: str) -> None:
        names = [m.name for m in self.models]
        if not names:
            raise UserError(f"config {path}.models: at least one model is needed")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"config {path}.models: model name {dup[0]!r} appears twice")

    def model(self, name: str) -> DropoutModel:
        for m in self.models:
            if m.name == name:
                return m
        raise UserError(f"unknown model {name!r}; the config has {', '.join(m.name for m in self.models)}")


def job_key(model: str, fold: int) -> str:
    """A job's name and its folder under RUNS: ``<model>/fold-<k>`` (the one builder)."""
    return f"{model}/fold-{fold}"


def parse_job_key(key: str) -> tuple[str, int]:
    """``(model, fold)`` of a :func:`job_key`; ValueError if ``key`` is not one."""
    model, _, fold = key.rpartition("/")
    if not model or not fold.startswith("fold-") or not fold[5:].isdigit():
        raise ValueError(f"not a job key: {key!r}")
    return model, int(fold[5:])


@dataclass(frozen=True)
class Job:
    """One training job of the experiment grid: a dropout model on one fold."""

    index: int
    model: DropoutModel
    fold: int

    @property
    def path(self) -> str:
        """Where the job's products live, relative to RUNS."""
        return job_key(self.model.name, self.fold)


def jobs(train: Train, n_folds: int) -> list[Job]:
    """The grid, numbered model-major: ``J = model_index * n_folds + fold``."""
    return [Job(m * n_folds + k, model, k) for m, model in enumerate(train.models)
            for k in range(n_folds)]
