"""The columns of a dataset: the label names (the network's targets) and the truth names.

One definition for every stage: simulate writes these names into the shards and the
index (``labels.attrs['names']``, ``truth.attrs['names']``), train and evaluate check
and read them. Pure constants, no imports.
"""

from __future__ import annotations

#: Label columns, in order: the lens' SIE parameters the network predicts
#: (theta_E in arcsec; q, e1, e2 dimensionless; docs/method.md section 2).
LABEL_NAMES: tuple[str, ...] = ("theta_E", "q", "e1", "e2")
#: The network's outputs, in this order: the label columns.
TARGETS = LABEL_NAMES

#: lenstronomy model of each rendered component.
MODELS = {"lens_mass": "SIE", "lens_light": "SERSIC_ELLIPSE", "source_light": "SERSIC_ELLIPSE"}

#: lenstronomy keyword arguments of each component, in the order of the truth columns.
KWARGS = {
    "lens_mass": ("theta_E", "e1", "e2", "center_x", "center_y"),
    "lens_light": ("amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y"),
    "source_light": ("amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y"),
}

#: Column names of a ``truth`` row: ``<component>.<lenstronomy kwarg>``.
TRUTH_NAMES: tuple[str, ...] = tuple(f"{c}.{k}" for c, ks in KWARGS.items() for k in ks)
