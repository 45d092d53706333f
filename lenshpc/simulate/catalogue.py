"""Read a catalogue of per-system parameters (CSV or HDF5 table) for the population.

Columns are named like the population's parameters, ``<component>.<parameter>``
(``lens_mass.theta_E``, ``lens_mass.q``, ``lens_mass.phi``, ``source_light.center_x``
(offset from the lens, arcsec), ...; see :func:`lenshpc.simulate.population.parameter_names`).
Row i is item i. Columns the catalogue lacks are drawn from the configured
distributions. Formats:

- CSV: a header line of column names, then one row per system (``#`` lines are comments);
- HDF5 (``.h5``/``.hdf5``): either one 1-d dataset per column at the file's root, or one
  compound (structured) dataset whose field names are the columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lenshpc.config import UserError
from lenshpc.config.simulate import Population
from lenshpc.simulate.population import parameter_names


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, comments="#", dtype=np.float64,
                              deletechars="", autostrip=True, ndmin=1)
    except ValueError as exc:
        raise UserError(f"catalogue {path}: not a CSV table of numbers: {exc}") from None
    if table.dtype.names is None:
        raise UserError(f"catalogue {path}: no header line of column names")
    columns: Any = table  # a structured array, indexed by column name
    return {name: np.asarray(columns[name], np.float64) for name in table.dtype.names}


def _read_hdf5(path: Path) -> dict[str, np.ndarray]:
    import h5py
    with h5py.File(path, "r") as f:
        compound = [k for k in f if isinstance(f[k], h5py.Dataset) and f[k].dtype.names]
        if len(compound) == 1:
            data = f[compound[0]][...]
            return {name: np.asarray(data[name], np.float64) for name in data.dtype.names}
        columns = {}
        for key in f:
            obj = f[key]
            if isinstance(obj, h5py.Dataset) and obj.ndim == 1 and obj.dtype.kind in "fiu":
                columns[key] = np.asarray(obj[...], np.float64)
        return columns


def read_catalogue(path: str | Path, population: Population, n_images: int) -> dict[str, np.ndarray]:
    """``{parameter name: (rows,) float64}`` for the first ``n_images`` rows of a catalogue.

    Raises UserError for a missing/unreadable file, unknown column names, non-finite values,
    or fewer rows than ``n_images``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"population.catalogue: file not found: {p}")
    try:
        columns = _read_hdf5(p) if p.suffix.lower() in (".h5", ".hdf5") else _read_csv(p)
    except UserError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"catalogue {p}: cannot be read: {exc}") from None
    allowed = parameter_names(population)
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise UserError(f"catalogue {p}: unknown column {unknown[0]!r}; columns are named "
                        f"like {', '.join(allowed[:3])}, ... ({len(allowed)} allowed)")
    if not columns:
        raise UserError(f"catalogue {p}: no columns")
    n_rows = len(next(iter(columns.values())))
    if n_rows < n_images:
        raise UserError(f"catalogue {p}: {n_rows} rows, but dataset.n_images is {n_images}")
    out = {}
    for name, col in columns.items():
        col = col[:n_images]
        bad = np.flatnonzero(~np.isfinite(col))
        if bad.size:
            raise UserError(f"catalogue {p}: column {name!r} row {int(bad[0])} is not a finite number")
        out[name] = col
    for comp in ("lens_mass", "lens_light", "source_light"):
        q = out.get(f"{comp}.q")
        if q is not None and not np.all((q > 0) & (q <= 1)):
            raise UserError(f"catalogue {p}: column '{comp}.q' must lie within (0, 1]")
    return out
