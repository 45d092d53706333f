"""Read a catalogue of per-system parameters (CSV or HDF5 table) for the population.

Row i (counted from 0 after the header) is item i; the first ``dataset.n_images`` rows
are read. Which column a parameter takes is ``population.catalogue_columns``:

- null: every column is named like a parameter, ``<component>.<parameter>``
  (``lens_mass.theta_E``, ``source_light.center_x`` (offset from the lens, arcsec), ...;
  see :func:`lenshpc.simulate.population.parameter_names`); any other column is refused;
- a preset (``csst``: Cao et al.'s CSST forecast tables) or a mapping
  ``{parameter: column name or number}``: only the mapped columns are read, and only they
  must hold numbers; the file's other columns (text, true/false) are ignored.

Parameters the catalogue does not give are drawn from the configured distributions.
Every value read passes the bounds of the config key it stands for
(:func:`lenshpc.config.simulate.values_refused`: finite, magnitude <= 1e6, and e.g.
``theta_E`` within (0, 100] arcsec, ``q`` within (0, 1]); a refusal is one line naming
the file, the row (and CSV line), the column, the value and what is allowed.

Formats:

- CSV: a header line of column names, then one row per system; ``#`` lines and blank
  lines are skipped; every row has as many fields as the header;
- HDF5 (``.h5``/``.hdf5``): either one 1-d dataset per column at the file's root, or one
  compound (structured) dataset whose field names are the columns.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc.config import UserError
from lenshpc.config.population import Population, value_allowed, values_refused
from lenshpc.simulate.population import parameter_names


def column_map(population: Population, header: list[str], where: str) -> dict[str, str | float]:
    """``{parameter: column name or constant}`` of ``population`` for a file whose columns
    are ``header``; refuses unknown columns (no mapping) and missing mapped columns."""
    if population.catalogue_columns is None:
        allowed = parameter_names(population)
        unknown = [c for c in header if c not in allowed]
        if unknown:
            raise UserError(f"catalogue {where}: unknown column {unknown[0]!r}; columns are named "
                            f"like {', '.join(allowed[:3])}, ... ({len(allowed)} allowed), or "
                            f"set population.catalogue_columns")
        if not header:
            raise UserError(f"catalogue {where}: no columns")
        return {c: c for c in header}
    mapping = population.catalogue_columns.mapping
    for name, column in mapping.items():
        if isinstance(column, str) and column not in header:
            shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
            raise UserError(f"catalogue {where}: no column {column!r} (population."
                            f"catalogue_columns.{name}); its columns: {shown}")
    return mapping


def _refuse(where: str, row: int, line: int | None, column: str, name: str, text: str,
            problem: str) -> UserError:
    at = f"row {row} (line {line})" if line is not None else f"row {row}"
    return UserError(f"catalogue {where} {at}, column {column!r} ({name}): {text} {problem}")


def _read_csv(path: Path, population: Population, n_images: int) -> dict[str, np.ndarray]:
    where = str(path)
    header: list[str] | None = None
    mapping: dict[str, str | float] = {}
    wanted: list[tuple[str, int]] = []   # (parameter, field index) of the columns read
    out: dict[str, np.ndarray] = {}
    row = 0
    with open(path, newline="") as f:
        for line, text in enumerate(f, 1):
            stripped = text.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = next(csv.reader([text]))
            if header is None:
                header = [c.strip() for c in fields]
                mapping = column_map(population, header, where)
                wanted = [(name, header.index(col)) for name, col in mapping.items()
                          if isinstance(col, str)]
                out = {name: np.empty(n_images) for name, _ in wanted}
                continue
            if row == n_images:
                break
            if len(fields) != len(header):
                few = "few" if len(fields) < len(header) else "many"
                raise UserError(f"catalogue {where} row {row} (line {line}): {len(fields)} "
                                f"fields, too {few} for the header's {len(header)} columns")
            for name, k in wanted:
                value = fields[k].strip()
                try:
                    x = float(value)
                except ValueError:
                    kind = "true/false" if value.lower() in ("true", "false") else "text"
                    raise _refuse(where, row, line, header[k], name, repr(value),
                                  f"is {kind}, not a number; allowed: "
                                  f"{value_allowed(name)}") from None
                if values_refused(name, [x])[0]:
                    raise _refuse(where, row, line, header[k], name, value,
                                  f"is out of range; allowed: {value_allowed(name)}")
                out[name][row] = x
            row += 1
    if header is None:
        raise UserError(f"catalogue {where}: no header line of column names")
    if row < n_images:
        raise UserError(f"catalogue {where}: {row} rows, but dataset.n_images is {n_images}")
    return _with_constants(out, mapping, n_images)


def _with_constants(out: dict[str, np.ndarray], mapping: dict[str, str | float],
                    n: int) -> dict[str, np.ndarray]:
    for name, col in mapping.items():
        if not isinstance(col, str):
            out[name] = np.full(n, float(col))
    return {name: out[name] for name in mapping}


def _hdf5_columns(path: Path) -> dict[str, Any]:
    import h5py
    with h5py.File(path, "r") as f:
        compound = [k for k in f if isinstance(f[k], h5py.Dataset) and f[k].dtype.names]
        if len(compound) == 1:
            data = f[compound[0]][...]
            return {name: data[name] for name in data.dtype.names}
        return {k: f[k][...] for k in f if isinstance(f[k], h5py.Dataset) and f[k].ndim == 1}


def _read_hdf5(path: Path, population: Population, n_images: int) -> dict[str, np.ndarray]:
    where = str(path)
    columns = _hdf5_columns(path)
    if population.catalogue_columns is None:   # only numeric columns, as before
        columns = {k: v for k, v in columns.items() if v.dtype.kind in "fiu"}
    mapping = column_map(population, list(columns), where)
    out = {}
    for name, col in mapping.items():
        if not isinstance(col, str):
            continue
        data = columns[col]
        if len(data) < n_images:
            raise UserError(f"catalogue {where}: {len(data)} rows in column {col!r}, but "
                            f"dataset.n_images is {n_images}")
        data = data[:n_images]
        if data.dtype.kind not in "fiu":
            what = "true/false" if data.dtype.kind == "b" else f"of type {data.dtype}"
            raise _refuse(where, 0, None, col, name, "the column", f"is {what}, not numbers; "
                          f"allowed: {value_allowed(name)}")
        values = np.asarray(data, dtype=np.float64)
        bad = np.flatnonzero(values_refused(name, values))
        if bad.size:
            i = int(bad[0])
            raise _refuse(where, i, None, col, name, repr(data[i].item()),
                          f"is out of range; allowed: {value_allowed(name)}")
        out[name] = values
    return _with_constants(out, mapping, n_images)


def read_catalogue(path: str | Path, population: Population, n_images: int) -> dict[str, np.ndarray]:
    """``{parameter name: (n_images,) float64}`` from the first ``n_images`` rows of a catalogue.

    Raises UserError (one line) for a missing or unreadable file, unknown or missing
    columns, a row with the wrong number of fields, a value that is not a number or that
    the parameter's config key would refuse, or fewer rows than ``n_images``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"population.catalogue: file not found: {p}")
    try:
        if p.suffix.lower() in (".h5", ".hdf5"):
            return _read_hdf5(p, population, n_images)
        return _read_csv(p, population, n_images)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"catalogue {p}: cannot be read: {exc}") from None

