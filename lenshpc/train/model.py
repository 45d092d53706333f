"""The modified AlexNet of docs/method.md section 2 and its weighted loss.

The layers come from :meth:`lenshpc.config.train.Network.layers` (the ``study`` network
of the authors or lenshpc's ``legacy`` one), which also gives every output shape.

The network body predicts standardised targets; its last layer, a fixed ``Rescaling``
with scale = std and offset = mean of the training fold, maps them to physical units
(theta_E in arcsec; q, e1, e2 dimensionless). The saved model therefore needs no side
file, and only built-in Keras layers appear in it. Training on the physical output with
the loss below is the same as training on standardised targets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from lenshpc.config.train import DropoutModel, Network
from lenshpc.dataset.columns import TARGETS

layers = tf.keras.layers


def _conv(x, filters: int, kernel: int, stride: int, network: Network, name: str,
          padding: str = "same"):
    # BatchNorm's shift makes the conv bias redundant.
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding,
                      use_bias=not network.batch_norm, name=f"{name}_conv")(x)
    if network.batch_norm:
        x = layers.BatchNormalization(momentum=network.batch_norm_momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_model(network: Network, dropout: DropoutModel, image_size: int,
                target_mean: Sequence[float] | np.ndarray,
                target_std: Sequence[float] | np.ndarray) -> tf.keras.Model:
    """The network for (N, size, size, 1) float32 images -> (N, 4) physical theta_E, q, e1, e2.

    ``target_mean``/``target_std`` (4 values, physical units) are the training fold's
    statistics; they become the fixed output ``Rescaling`` layer. 'same' padding keeps
    every block valid for small debug images."""
    n = network
    plan = n.layers(image_size)
    if plan[-1][-1] < 1:
        raise ValueError(f"{image_size}x{image_size} images are too small for the "
                         f"{n.architecture} network")
    images = tf.keras.Input((image_size, image_size, 1), name="image")
    x = images
    for name, kind, filters, kernel, stride, padding, _ in plan:
        if kind == "conv":
            x = _conv(x, filters, kernel, stride, n, name, padding)
        else:
            x = layers.MaxPooling2D(kernel, strides=stride, padding=padding, name=name)(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(n.dense1, activation="relu", name="dense1")(x)
    x = layers.Dropout(dropout.p1, name="dropout1")(x)
    x = layers.Dense(n.dense2, activation="relu", name="dense2")(x)
    x = layers.Dropout(dropout.p2, name="dropout2")(x)
    # The output layers compute in float32 in any precision (mixed_float16 included).
    standardised = layers.Dense(len(TARGETS), dtype="float32", name="standardised")(x)
    physical = layers.Rescaling(scale=[float(s) for s in target_std],
                           offset=[float(m) for m in target_mean], dtype="float32",
                           name="to_physical")(standardised)
    return tf.keras.Model(images, physical, name=f"alexnet_{dropout.name}")


def set_precision(precision: str) -> None:
    """Keras' global precision policy for the layers built from now on: ``float32`` or
    ``mixed_float16`` (float16 arithmetic, float32 weights)."""
    tf.keras.mixed_precision.set_global_policy(precision)


def weighted_mse(weights: Sequence[float], target_std: Sequence[float] | np.ndarray):
    """Loss of docs/method.md: mean over the batch of sum_j w_j (y_j - yhat_j)^2, with y and
    yhat standardised (divided by the training fold's std; the means cancel)."""
    w = tf.constant(np.asarray(weights, np.float32))
    inv_std = tf.constant(1.0 / np.asarray(target_std, np.float32))

    def loss(y_true, y_pred):
        return tf.reduce_sum(w * tf.square((y_true - y_pred) * inv_std), axis=-1)

    loss.__name__ = "weighted_mse"
    return loss


def inference_model(model: tf.keras.Model) -> tf.keras.Model:
    """The same layers and weights without optimizer or loss: what ``model.keras`` holds."""
    return tf.keras.Model(model.inputs, model.outputs, name=model.name)


# --------------------------------------------------------------------------- dropout randomness


def use_generator_rng() -> None:
    """Make every Keras random layer built from now on draw from a ``tf.random.Generator``
    whose state is a variable: the dropout masks of a resumed job then continue exactly
    where the checkpoint left them (:func:`rng_states`, :func:`set_rng_states`). Call
    before the model is built; seeded by ``tf.keras.utils.set_random_seed``."""
    tf.keras.backend.experimental.enable_tf_random_generator()


def _generators(model: tf.keras.Model) -> list:
    """The random generators of the model's random layers (Dropout), in layer order.
    (Keras 2.15 keeps them in ``layer._random_generator``; the version is pinned.)"""
    out = []
    for layer in model.layers:
        rng = getattr(layer, "_random_generator", None)
        if rng is None:
            continue
        rng._maybe_init()
        gen = getattr(rng, "_generator", None)
        if gen is None:
            raise RuntimeError(f"layer {layer.name} has no generator state: call "
                               f"use_generator_rng() before building the model")
        out.append(gen)
    return out


def rng_states(model: tf.keras.Model) -> list[np.ndarray]:
    """Current states of the model's random generators (for the checkpoint)."""
    return [g.state.numpy() for g in _generators(model)]


def set_rng_states(model: tf.keras.Model, states: list[np.ndarray]) -> None:
    """Restore states saved by :func:`rng_states` (same model, same layer order)."""
    gens = _generators(model)
    if len(gens) != len(states):
        raise ValueError(f"{len(states)} saved generator states for {len(gens)} random layers")
    for g, s in zip(gens, states, strict=True):
        g.state.assign(s)
