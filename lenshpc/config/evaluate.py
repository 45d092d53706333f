"""Config section of the evaluate stage."""

from __future__ import annotations

from dataclasses import dataclass

from lenshpc.config.schema import param


@dataclass(frozen=True)
class Evaluate:
    """Evaluation: work split, MC dropout, figures."""

    chunk_size: int = param(256, ge=1, doc="Test items per unit of work (job x chunk) spread over ranks.")
    batch_size: int = param(256, ge=1, doc="Prediction batch size.")
    mc_samples: int = param(0, ge=0, doc="MC-dropout passes per image (0: off; --mc-samples overrides).")
    n_examples: int = param(8, ge=1, doc="Example images shown in the report.")
    dpi: int = param(200, ge=50, doc="Resolution of the PNG figures.")
