"""What a network sees of an image: the per-image normalisation applied before training,
evaluation and prediction alike (one function, so the three cannot drift apart).

``max``: the image as stored (simulate stores each image scaled to a maximum of 1), i.e.
x / max. ``study``: the authors' ``(x - min) / (max + 1e-6)`` of each image (their
``k_fold_train.py``, ``parse_tfrecord``), which also removes a constant background.
"""

from __future__ import annotations

import numpy as np

#: The kinds of :func:`normalize`, as ``train.normalize`` names them.
KINDS = ("max", "study")

#: The authors' guard against a division by zero (``k_fold_train.py``).
STUDY_EPS = 1e-6


def normalize(images: np.ndarray, kind: str, out: np.ndarray | None = None) -> np.ndarray:
    """Per-image normalisation of ``images`` (..., H, W) or (..., H, W, 1), float32.

    ``max``: x / max(x) (an image whose maximum is not positive is left as it is);
    ``study``: (x - min(x)) / (max(x) + 1e-6). Min and max are over each image's pixels.
    ``out`` may be ``images`` itself (in place). NaN pixels stay NaN."""
    if kind not in KINDS:
        raise ValueError(f"unknown normalisation {kind!r}; expected one of {', '.join(KINDS)}")
    x = np.asarray(images, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    axes = (-3, -2, -1) if x.ndim >= 3 and x.shape[-1] == 1 else (-2, -1)
    hi = np.max(x, axis=axes, keepdims=True)
    if kind == "max":
        scale = np.where(hi > 0, hi, np.float32(1))
        np.divide(x, scale, out=out)
        return out
    lo = np.min(x, axis=axes, keepdims=True)
    np.subtract(x, lo, out=out)
    np.divide(out, hi + np.float32(STUDY_EPS), out=out)
    return out
