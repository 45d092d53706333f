"""Predictions of a trained model: deterministic, and MC dropout with fixed seeds.

The only TensorFlow-dependent module of the evaluate stage (imported when there is
something to predict). A model maps ``(N, H, W, 1)`` float32 images, each normalised as
in training (:func:`lenshpc.train.preprocess.normalize` with the job's
``train.normalize``, applied here to every batch), to ``(N, 4)`` physical ``theta_E``
(arcsec), ``q``, ``e1``, ``e2``.

Rank invariance: a chunk of test items is always cut into the same batches
(``batch_size`` from the chunk's first item), so an item's prediction does not depend
on which rank predicted it. MC-dropout masks come from stateless random numbers
seeded by (root seed, job, first item of the chunk, pass, batch, layer), never by rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lenshpc.config import UserError
from lenshpc.train.preprocess import normalize as normalize_images


def configure_threads(threads: int) -> None:
    """Set TensorFlow's intra-op threads (0 keeps TensorFlow's default). Call before any op.

    A fixed count matters for more than speed: how a convolution's sums are split over
    threads can change the last bits of a prediction."""
    import logging

    import tensorflow as tf
    # One compiled function per model (job) is by design; TensorFlow's hint about frequent
    # retracing counts them together and would warn on every run with several jobs.
    logging.getLogger("tensorflow").addFilter(
        lambda record: "triggered tf.function retracing" not in record.getMessage())
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def load_model(path) -> Any:
    """The Keras model saved by ``lenshpc train`` (compile=False); UserError if unreadable."""
    import tensorflow as tf
    try:
        return tf.keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for a bad file
        raise UserError(f"cannot load model {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def dropout_rates(model) -> list[float]:
    """Rates of the model's Dropout layers (searched through nested models)."""
    import tensorflow as tf
    rates = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            rates += dropout_rates(layer)
        elif isinstance(layer, tf.keras.layers.Dropout):
            rates.append(float(layer.rate))
    return rates


class _Box:
    """A plain holder, so Keras does not track the seed variable as a layer weight."""

    def __init__(self, value):
        self.value = value


class Predictor:
    """A loaded model's predictions: deterministic, and MC dropout with seeded masks.

    Both are compiled once (``tf.function``) and called per batch. For MC dropout the
    Dropout layers are replaced by a seeded dropout that is always active; every other
    layer is the trained layer itself (shared weights) called in inference mode, so batch
    normalisation uses its moving statistics (in training mode it would use each batch's
    own statistics, making predictions depend on the batch, and update the averages).

    ``normalize``: the kind of :func:`lenshpc.train.preprocess.normalize` the model was
    trained with ('max': the stored images, which have a maximum of 1, as they are)."""

    def __init__(self, model, mc: bool = False, normalize: str = "max"):
        import tensorflow as tf

        self.model = model
        self.normalize = normalize
        self.has_dropout = any(r > 0 for r in dropout_rates(model))
        self._infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._mc = None
        if not (mc and self.has_dropout):
            return
        self._seed = tf.Variable(tf.zeros(2, tf.int64), trainable=False)
        box = _Box(self._seed)

        class SeededDropout(tf.keras.layers.Layer):
            def __init__(self, rate: float, layer_id: int, **kw):
                super().__init__(**kw)
                self.rate, self.layer_id = float(rate), layer_id

            def call(self, x, training=None):
                if self.rate <= 0:
                    return x
                # independent Philox streams per layer: the seed's second word shifted by the id
                seed = box.value + tf.constant([0, self.layer_id], tf.int64)
                u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=x.dtype)
                return tf.where(u >= self.rate, x / (1.0 - self.rate), tf.zeros_like(x))

        counter = iter(range(1, 1_000_000))

        def clone(layer):
            if isinstance(layer, tf.keras.layers.Dropout):
                return SeededDropout(layer.rate, next(counter), name=f"mc_{layer.name}")
            return layer   # the trained layer itself: weights shared, not copied

        mc_model = tf.keras.models.clone_model(model, clone_function=clone)
        self._mc = tf.function(lambda x: mc_model(x, training=False), reduce_retracing=True)

    def _input(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 1) float32 network input of stored images (n, H, W)."""
        return normalize_images(np.asarray(images, dtype=np.float32), self.normalize)[..., None]

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """``(N, 4)`` float64 predictions of ``images`` ``(N, H, W)``, inference mode."""
        out = np.empty((len(images), 4), dtype=np.float64)
        for start, stop in _batches(len(images), batch_size):
            out[start:stop] = self._infer(self._input(images[start:stop])).numpy()
        return out

    def predict_mc(self, images: np.ndarray, batch_size: int, samples: int,
                   seed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (ddof=1) over ``samples`` dropout passes, each
        ``(N, 4)``. ``seed`` identifies the chunk (root seed, job, first item); pass ``s``
        of batch ``b`` draws its masks from (seed, s, b). A model without dropout gives its
        deterministic prediction and zero spread."""
        if self._mc is None:
            return self.predict(images, batch_size), np.zeros((len(images), 4))
        passes = self.mc_passes(images, batch_size, samples, seed)
        return passes.mean(axis=0), passes.std(axis=0, ddof=1)

    def mc_passes(self, images: np.ndarray, batch_size: int, samples: int,
                  seed: tuple[int, ...]) -> np.ndarray:
        """``(samples, N, 4)`` predictions, one per dropout pass (masks as in
        :meth:`predict_mc`); a model without dropout gives one pass, its deterministic
        prediction, ``(1, N, 4)``."""
        if self._mc is None:
            return self.predict(images, batch_size)[None]
        passes = np.empty((samples, len(images), 4), dtype=np.float64)
        for s in range(samples):
            for b, (start, stop) in enumerate(_batches(len(images), batch_size)):
                state = np.random.SeedSequence([*seed, s, b]).generate_state(2)
                self._seed.assign(state.astype(np.int64))
                passes[s, start:stop] = self._mc(self._input(images[start:stop])).numpy()
        return passes
