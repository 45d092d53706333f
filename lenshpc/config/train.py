"""Config section of the train stage: network, optimiser and the experiment grid."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from lenshpc.config.schema import Section, UserError, Value, _fmt, build, param, to_plain

# The network's outputs (theta_E, q, e1, e2) are the dataset's label columns:
# lenshpc.dataset.columns.TARGETS (the config tree does not import the stages' owners).


#: The keys of a ``train.models`` entry that belong to the model itself; every other key
#: of the entry overrides the ``train`` key of the same name for that model's jobs.
MODEL_KEYS = ("name", "p1", "p2")

#: Train keys that shape the grid itself and so cannot differ between models.
GRID_KEYS = ("models", "folds")


@dataclass(frozen=True)
class DropoutModel(Value):
    """One model of the experiment: its dropout (p1 after Dense 512, p2 after Dense 1024)
    and, for a variant, the ``train`` keys it sets to other values than the section."""

    name: str = param(doc="Model name, e.g. model1 (used in paths: RUNS/<name>/fold-<k>); "
                      "1 to 64 ASCII letters, digits, '-' or '_'. Besides name, p1 and p2 an "
                      "entry may set any other train key for this model's jobs (a variant), "
                      "e.g. {name: m3-b64, p1: 0, p2: 0, batch_size: 64}.",
                      check=lambda s: None if 0 < len(s) <= 64 and s.isascii()
                      and s.replace("-", "").replace("_", "").isalnum()
                      else "must be 1 to 64 ASCII letters, digits, '-' or '_'")
    p1: float = param(0.0, ge=0, lt=1, doc="Dropout rate after the first dense layer.")
    p2: float = param(0.0, ge=0, lt=1, doc="Dropout rate after the second dense layer.")
    #: ``(key, plain YAML value)`` pairs of the train keys this entry overrides, in the
    #: order given (checked at load against the train section's keys and bounds).
    overrides: tuple[tuple[str, Any], ...] = field(default=(), hash=False, repr=False,
                                                   metadata={"doc": "", "internal": True})

    @classmethod
    def from_yaml(cls, value: Any, path: str) -> "DropoutModel":
        if not isinstance(value, Mapping):
            raise UserError(f"config {path}: {_fmt(value)} is not a mapping")
        own = {k: v for k, v in value.items() if k in MODEL_KEYS}
        rest = {str(k): v for k, v in value.items() if k not in MODEL_KEYS}
        allowed = [f.name for f in dataclasses.fields(Train) if f.name not in GRID_KEYS]
        for key in rest:
            if key not in allowed:
                raise UserError(f"config {path}.{key}: unknown key; a model entry takes "
                                f"{', '.join(MODEL_KEYS)} and any train key: "
                                f"{', '.join(sorted(allowed))}")
        if "name" not in own:
            raise UserError(f"config {path}.name: required key is missing")
        core = build(_ModelCore, own, path)
        # Types and bounds of every override, with this entry's path in the message.
        build(Train, rest, path)
        return cls(core.name, core.p1, core.p2, tuple(rest.items()))

    def to_yaml(self) -> dict[str, Any]:
        return {"name": self.name, "p1": self.p1, "p2": self.p2, **dict(self.overrides)}

    def describe_overrides(self) -> str:
        """The variant's overrides as one line, e.g. ``batch_size=64,
        network.architecture=legacy`` (empty for a plain dropout model)."""
        return ", ".join(f"{k}={v}" for k, v in _flat(dict(self.overrides)))


@dataclass(frozen=True)
class _ModelCore:
    """The model's own keys of a train.models entry (built and checked by the schema)."""

    name: str = dataclasses.field(metadata=dataclasses.fields(DropoutModel)[0].metadata)
    p1: float = dataclasses.field(default=0.0, metadata=dataclasses.fields(DropoutModel)[1].metadata)
    p2: float = dataclasses.field(default=0.0, metadata=dataclasses.fields(DropoutModel)[2].metadata)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out += _flat(value, f"{prefix}{key}.")
        else:
            text = "true" if value is True else "false" if value is False else \
                "null" if value is None else str(value)
            out.append((f"{prefix}{key}", text))
    return out


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top``'s keys replaced; nested mappings are merged key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


#: Layer geometry of each architecture where a Network key is null: first-block kernel and
#: stride, second-block kernel and stride, block-3 kernel and number of conv layers.
ARCHITECTURE_DEFAULTS = {
    # The authors' network (their draw_cnn_diagram.py, with output shapes).
    "study": {"conv1_kernel": 7, "conv1_stride": 2, "conv2_kernel": 5, "conv2_stride": 3,
              "conv3_kernel": 3, "conv3_layers": 4},
    # lenshpc's network before the authors' code was public (the paper's text, the rest
    # assumed): kept so that configs/reduced.yaml stays reproducible.
    "legacy": {"conv1_kernel": 11, "conv1_stride": 2, "conv2_kernel": 5, "conv2_stride": 3,
               "conv3_kernel": 3, "conv3_layers": 4},
}


@dataclass(frozen=True)
class Network(Section):
    """The modified AlexNet of docs/method.md section 2 (widths and kernels configurable)."""

    architecture: Literal["study", "legacy"] = param(
        "legacy", doc="study: the authors' network (7x7/2 valid conv, 2x2 pool, 5x5/3 conv, "
        "3x3 pool, one 3x3 and three 1x1 convs, 2x2 valid pool; 100x100 images give 1x1x256 "
        "before the dense head); legacy: lenshpc's earlier assumed network (11x11/2, four 3x3 "
        "convs in block 3, 'same' 2x2 pools). Null kernel keys take the architecture's values "
        "(docs/method.md section 2).")
    conv1_filters: int = param(128, ge=1, le=8192, doc="Block 1 filters.")
    conv1_kernel: int | None = param(None, ge=1, le=64, unit="pixels", doc="Block 1 kernel "
                                     "size (null: study 7, the authors' code; legacy 11 "
                                     "(assumed)).")
    conv1_stride: int | None = param(None, ge=1, le=64, doc="Block 1 stride (null: 2).")
    conv2_filters: int = param(256, ge=1, le=8192, doc="Block 2 filters.")
    conv2_kernel: int | None = param(None, ge=1, le=64, unit="pixels", doc="Block 2 kernel "
                                     "size (null: 5, the paper's text; the legacy network's "
                                     "5 was assumed before the authors' code confirmed it "
                                     "(assumed)).")
    conv2_stride: int | None = param(None, ge=1, le=64, doc="Block 2 stride (null: 3).")
    conv3_filters: int = param(256, ge=1, le=8192, doc="Block 3 filters (each of its conv layers).")
    conv3_layers: int | None = param(None, ge=1, le=64, doc="Block 3 number of conv layers "
                                     "(null: 4; study: the first is conv3_kernel wide, the "
                                     "others 1x1; legacy: all conv3_kernel wide).")
    conv3_kernel: int | None = param(None, ge=1, le=64, unit="pixels", doc="Block 3 kernel "
                                     "size (null: 3).")
    pool_size: int | None = param(None, ge=1, le=64, unit="pixels", doc="Max-pool size and "
                                  "stride of the legacy network (null: 2) (assumed); the study "
                                  "network's pools are 2, 3 and 2 (the authors' code; refused "
                                  "with it).")
    batch_norm: bool = param(True, doc="BatchNorm after every conv layer; the study has it in "
                             "blocks 1 and 2, in block 3 (assumed).")
    batch_norm_momentum: float = param(0.99, gt=0, lt=1, doc="Momentum of the BatchNorm moving "
                                       "statistics used at inference (lower adapts in fewer "
                                       "steps); Keras' default (assumed).")
    dense1: int = param(512, ge=1, le=65536, doc="Units of the first dense layer.")
    dense2: int = param(1024, ge=1, le=65536, doc="Units of the second dense layer.")

    def validate(self, path: str) -> None:
        if self.architecture == "study" and self.pool_size is not None:
            raise UserError(f"config {path}.pool_size: {self.pool_size} applies to the legacy "
                            f"network only (the study network's pools are 2, 3 and 2); "
                            f"remove it or set architecture: legacy")

    def layers(self, image_size: int) -> list[tuple[str, str, int, int, int, str, int]]:
        """The layers in order as ``(name, kind, filters, kernel, stride, padding, side)``:
        kind ``conv`` (Conv2D + BatchNorm + ReLU) or ``pool`` (MaxPool2D); ``side`` is the
        output's height and width for ``image_size`` pixels (0: the image is too small)."""
        g = self.geometry
        out, side = [], image_size

        def add(name: str, kind: str, filters: int, kernel: int, stride: int, padding: str):
            nonlocal side
            side = -(-side // stride) if padding == "same" else (
                (side - kernel) // stride + 1 if side >= kernel else 0)
            out.append((name, kind, filters, kernel, stride, padding, max(side, 0)))

        if self.architecture == "study":
            add("block1", "conv", self.conv1_filters, g("conv1_kernel"), g("conv1_stride"), "valid")
            add("block1_pool", "pool", self.conv1_filters, 2, 2, "same")
            add("block2", "conv", self.conv2_filters, g("conv2_kernel"), g("conv2_stride"), "same")
            add("block2_pool", "pool", self.conv2_filters, 3, 3, "same")
            for i in range(g("conv3_layers")):
                add(f"block3_{i + 1}", "conv", self.conv3_filters,
                    g("conv3_kernel") if i == 0 else 1, 1, "same")
            add("block3_pool", "pool", self.conv3_filters, 2, 2, "valid")
            return out
        pool = 2 if self.pool_size is None else self.pool_size
        add("block1", "conv", self.conv1_filters, g("conv1_kernel"), g("conv1_stride"), "same")
        add("block1_pool", "pool", self.conv1_filters, pool, pool, "same")
        add("block2", "conv", self.conv2_filters, g("conv2_kernel"), g("conv2_stride"), "same")
        add("block2_pool", "pool", self.conv2_filters, pool, pool, "same")
        for i in range(g("conv3_layers")):
            add(f"block3_{i + 1}", "conv", self.conv3_filters, g("conv3_kernel"), 1, "same")
        add("block3_pool", "pool", self.conv3_filters, pool, pool, "same")
        return out

    def geometry(self, key: str) -> int:
        """A layer-geometry key's value in force (the architecture's where null)."""
        value = getattr(self, key)
        return ARCHITECTURE_DEFAULTS[self.architecture][key] if value is None else value


@dataclass(frozen=True)
class Train(Section):
    """Training: the experiment grid (dropout models x folds), loss, optimiser, schedule."""

    models: tuple[DropoutModel, ...] = param(
        (DropoutModel("model1", 0.2, 0.3), DropoutModel("model2", 0.2, 0.2),
         DropoutModel("model3", 0.0, 0.0)),
        doc="Dropout configurations; jobs are numbered model-major: J = model_index * n_folds + fold.")
    folds: tuple[int, ...] | None = param(None, ge=0, le=99, doc="Validation folds to train "
                                          "(null: every fold of dataset.n_folds), e.g. [0] "
                                          "for an ablation on one fold; jobs are numbered "
                                          "model-major over these folds.")
    network: Network = param(default_factory=Network, doc="Network shape.")
    loss_weights: tuple[float, float, float, float] = param(
        (1.0, 1.0, 3.0, 3.0), ge=0, le=1000, doc="Weights of the MSE terms of theta_E, q, e1, e2 (the paper; the "
        "authors' k_fold_train.py).")
    standardize_targets: bool = param(True, doc="Standardise targets with training-fold "
                                      "statistics; predictions are mapped back before any "
                                      "metric. lenshpc's option (assumed); the authors train "
                                      "on raw physical targets (k_fold_train.py): false in "
                                      "configs/paper.yaml.")
    normalize: Literal["max", "study"] = param(
        "max", doc="What the network sees of each image: max, the image as stored (scaled to "
        "a maximum of 1); study, the authors' (x - min) / (max + 1e-6) of each image. Applied "
        "alike in train, evaluate and predict. lenshpc's default max; the authors' study "
        "(k_fold_train.py), configs/paper.yaml.")
    shuffle: Literal["global", "buffer"] = param(
        "global", doc="Order of the training items in each epoch. global: a fresh random "
        "permutation of all of them; buffer: the authors' tf.data order, the training folds "
        "in file order (fold after fold) through a shuffle buffer of train.shuffle_buffer "
        "items (needs train.input memory). lenshpc's default global; the authors' buffer of "
        "1000 (k_fold_train.py), configs/paper.yaml.")
    batch_size: int = param(64, ge=1, le=65536, doc="Batch size per rank. lenshpc's default 64 "
                            "(assumed); the authors' 128 (main_config.ini), configs/paper.yaml.")
    epochs: int = param(100, ge=1, le=100_000, doc="Maximum number of epochs. lenshpc's "
                        "default 100 (assumed); the authors' 50 (main_config.ini), "
                        "configs/paper.yaml.")
    learning_rate: float = param(1e-3, gt=0, le=10, doc="Initial NAdam learning rate (single "
                                 "rank; scaled by the number of ranks), 1e-3 (the authors' main_config.ini; "
                                 "lenshpc had assumed it before).")
    warmup_epochs: int = param(1, ge=0, le=1000, doc="Epochs of linear learning-rate warm-up to "
                               "the scaled rate (Horovod's practice; not in the study) "
                               "(assumed).")
    early_stopping_patience: int = param(15, ge=0, le=100_000, doc="Epochs without val_loss "
                                         "improvement before stopping (0: never stop early). lenshpc's "
                                         "default 15 (assumed); the authors' k_fold_train.py "
                                         "never stops early (commented out): 0 in "
                                         "configs/paper.yaml.")
    reduce_lr_factor: float = param(0.5, gt=0, lt=1, doc="ReduceLROnPlateau factor, 0.5 (the "
                                   "authors' k_fold_train.py; lenshpc had assumed it).")
    reduce_lr_patience: int = param(5, ge=0, le=100_000, doc="ReduceLROnPlateau patience "
                                 "(epochs). lenshpc's default 5 (assumed); the authors' 3 "
                                 "(k_fold_train.py), configs/paper.yaml.")
    min_lr: float = param(1e-6, ge=0, le=10, doc="ReduceLROnPlateau lower bound. "
                       "lenshpc's default 1e-6 (assumed); the authors' 1e-8 (k_fold_train.py), "
                       "configs/paper.yaml.")
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
    shuffle_buffer: int = param(4096, ge=1, le=10_000_000, doc="Items in the shuffle buffer "
                                "of a streaming rank (train.input: stream) and of "
                                "train.shuffle: buffer (the authors': 1000).")
    stream_shards: int = param(4, ge=1, le=1024, doc="Shards a streaming rank reads at a time, "
                               "interleaved item block by item block (train.input: stream).")
    keep: Literal["best", "last"] = param(
        "best", doc="Which epoch's weights model.keras holds: best, the lowest val_loss "
        "(lenshpc's default, read from the paper's 'minimum values attained') (assumed), or "
        "last, "
        "the last epoch trained (the authors' k_fold_train.py saves and scores it; "
        "configs/paper.yaml).")
    tensorboard: bool = param(True, doc="Write TensorBoard logs (rank 0) to RUNS/<model>/fold-<k>/logs.")

    def validate(self, path: str) -> None:
        names = [m.name for m in self.models]
        if not names:
            raise UserError(f"config {path}.models: at least one model is needed")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"config {path}.models: model name {dup[0]!r} appears twice")
        for i, m in enumerate(self.models):
            if m.overrides:
                self.for_model(m, f"{path}.models[{i}]")

    def for_model(self, model: DropoutModel, path: str = "train") -> "Train":
        """The train settings of ``model``'s jobs: this section with the model entry's
        overrides (nested sections merged key by key). UserError if they do not fit."""
        if not model.overrides:
            return self
        base = to_plain(self)
        del base["models"]
        merged = build(Train, _merge(base, dict(model.overrides)), path)
        return dataclasses.replace(merged, models=self.models, folds=self.folds)

    def effective(self) -> dict[str, Any]:
        """The settings as plain data, without the model list (what run.json records)."""
        plain = to_plain(self)
        del plain["models"]
        return plain

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
    """The grid, numbered model-major over the trained folds (``train.folds``, else all
    ``n_folds``): ``J = model_index * n_folds + fold`` when every fold is trained."""
    folds = range(n_folds) if train.folds is None else train.folds
    return [Job(m * len(folds) + i, model, k) for m, model in enumerate(train.models)
            for i, k in enumerate(folds)]
