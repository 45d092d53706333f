"""Config section of the evaluate stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lenshpc.config.schema import param


def _mc_samples_ok(n: int) -> str | None:
    return None if n == 0 or n >= 2 else "must be 0 (off) or at least 2 (a spread needs two passes)"


@dataclass(frozen=True)
class Evaluate:
    """Evaluation: work split, MC dropout, re-rendering and figures."""

    chunk_size: int = param(256, ge=1, le=1_000_000, doc="Test items per unit of work (job x chunk) spread over "
                            "ranks. Units are fixed by item index, so results do not depend on "
                            "the number of ranks.")
    batch_size: int = param(256, ge=1, le=65536, doc="Prediction batch size (batches are cut inside a chunk, "
                            "so an item's batch is the same on any number of ranks).")
    mc_samples: int = param(0, ge=0, le=10_000, check=_mc_samples_ok,
                            doc="MC-dropout passes per image (0: off; --mc-samples overrides). "
                            "Dropout is active, batch normalisation stays in inference mode.")
    theta_E_min: float = param(1e-3, gt=0, le=1, unit="arcsec",
                               doc="Predicted theta_E below this is raised to it before "
                               "re-rendering (an SIE needs theta_E > 0); metrics use the raw "
                               "prediction.")
    max_ellipticity: float = param(0.9, gt=0, lt=1,
                                   doc="Predicted (e1, e2) with a longer modulus are shortened to "
                                   "it before re-rendering (|e| < 1 means q > 0); metrics use the "
                                   "raw prediction.")
    threads: int = param(1, ge=0, le=4096, doc="TensorFlow threads per rank. 1: run one rank per core; "
                         "predictions are then bit-identical for any number of ranks. 0: "
                         "TensorFlow's default (all cores of the node; with several ranks per "
                         "node they compete, and the last bits may depend on the thread count).")
    rel_err_floor: float = param(0.01, gt=0, le=1, doc="Relative errors |pred - true| / |true| "
                                 "are kept as the study defines them; the items with |true| "
                                 "below this floor (e1, e2 near 0 as q -> 1) are counted in "
                                 "metrics.csv and Table 1 (n_below_floor), and an error that "
                                 "does not divide by the truth (|d| / std of the test set) is "
                                 "reported beside them.")
    psnr: Literal["both", "study", "max1"] = param(
        "both", doc="PSNR shown in Table 1 and the figures. study: the authors' (each image "
        "clipped to its own 1st-99th percentiles and scaled to [0, 1], then 10 log10(1 / "
        "MSE)), the one to compare with the paper; max1: 10 log10(1 / MSE) of the images "
        "as stored (maximum 1); both: the study's first and max1 beside it. psnr.csv and "
        "predictions.h5 always hold both.")
    ssim_ring_width: float = param(0.2, gt=0, le=100, unit="arcsec",
                                   doc="Half-width of the ring around the true theta_E "
                                   "in which ssim_ring compares the images (the authors' "
                                   "0.2).")
    figures: bool = param(True, doc="Draw the figures (false: tables and report.md only, e.g. "
                          "for a quick re-evaluation).")
    n_examples: int = param(8, ge=1, le=100, doc="Example images shown in the report.")
    dpi: int = param(200, ge=50, le=1200, doc="Resolution of the PNG figures.")
