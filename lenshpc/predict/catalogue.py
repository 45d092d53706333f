"""The catalogue ``lenshpc predict`` writes (the one owner of its columns and header) and
the partial files that let a killed run resume.

Columns: ``source`` (file and HDU/plane, or mosaic position), ``index`` (the cutout's
number in input order), then ``<p>_mean``, ``<p>_std``, ``<p>_p16``, ``<p>_p50``,
``<p>_p84`` for p in theta_E (arcsec), q, e1, e2, and ``flag``
(:mod:`lenshpc.predict.kernels`). FITS (a binary table) or, for a ``.csv`` name, CSV
with a commented header (astropy's ECSV, comma-separated). The header: ``LENSHPC``
(version), ``CONFIG`` and ``CONFSHA`` (the training config's name and sha256), ``MCSAMPL``,
``NMODELS``, ``RESAMPLE``, ``CALIB``, and ``PROVJSON``: everything as JSON (the config
text, every model file with its sha256, every input with its sha256, the flag bits).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc.dataset.columns import TARGETS
from lenshpc.io import atomic_path
from lenshpc.predict.kernels import STATS


def columns() -> list[str]:
    """The catalogue's column names, in order."""
    return ["source", "index", *(f"{p}_{s}" for p in TARGETS for s in STATS), "flag"]


def table(sources: list[str], stats: np.ndarray, flags: np.ndarray, provenance: dict[str, Any]):
    """An astropy Table of the catalogue (``stats`` (n, 4, 5), ``flags`` (n,))."""
    from astropy.table import Table
    data: dict[str, Any] = {"source": np.array(sources, dtype=str),
                            "index": np.arange(len(sources), dtype=np.int64)}
    for k, p in enumerate(TARGETS):
        for j, s in enumerate(STATS):
            data[f"{p}_{s}"] = stats[:, k, j]
    data["flag"] = flags.astype(np.int32)
    t = Table(data)
    t["theta_E_mean"].unit = t["theta_E_std"].unit = "arcsec"
    for s in ("p16", "p50", "p84"):
        t[f"theta_E_{s}"].unit = "arcsec"
    t.meta.update({
        "LENSHPC": provenance["lenshpc_version"], "CONFIG": provenance["config_name"],
        "CONFSHA": provenance["config_sha256"], "MCSAMPL": provenance["mc_samples"],
        "NMODELS": len(provenance["models"]), "RESAMPLE": bool(provenance["resample"]),
        # the calibration file's sha256 and its scales (job -> theta_E, q, e1, e2), or none
        "CALIB": (provenance.get("calibration") or {}).get("sha256", "none"),
        "CALSCALE": json.dumps((provenance.get("calibration") or {}).get("scales")),
        "PROVJSON": json.dumps(provenance, sort_keys=True)})
    return t


def write(path: Path, t) -> None:
    """Write table ``t`` to ``path`` atomically: CSV for a ``.csv`` name, else FITS."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            t.write(tmp, format="ascii.ecsv", delimiter=",", overwrite=True)
        else:
            t.write(tmp, format="fits", overwrite=True)


def read_provenance(path: Path) -> dict[str, Any]:
    """The PROVJSON of a catalogue written by :func:`write`."""
    from astropy.table import Table
    t = Table.read(path, format="ascii.ecsv" if Path(path).suffix.lower() == ".csv" else "fits")
    return json.loads(t.meta["PROVJSON"])


def provenance_key(provenance: dict[str, Any]) -> str:
    """sha256 of what decides the numbers (config, models, inputs, settings): partial
    results are reused only under the same key."""
    keep = {k: provenance[k] for k in ("config_sha256", "models", "inputs", "mc_samples",
                                       "resample", "pixel_scale", "chunk_size", "calibration",
                                       "seed")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()



# --------------------------------------------------------------------------- partial results


def partial_root(out: Path) -> Path:
    """Folder beside ``out`` that holds the lock of the run writing ``out`` and, one
    sub-folder per provenance key, the chunks it finished."""
    return Path(out).with_name(f".{Path(out).name}.partial")


def partial_dir(out: Path, key: str) -> Path:
    """Folder of the partial results of the run writing ``out`` under ``key``."""
    return partial_root(out) / key[:16]


def chunk_path(folder: Path, start: int) -> Path:
    return folder / f"chunk-{start:09d}.npz"


def save_chunk(folder: Path, start: int, stats: np.ndarray, flags: np.ndarray) -> None:
    """One chunk's results, written atomically (a file under its final name is whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()   # built in memory: a full disk fails in one write, not inside zipfile
    np.savez(buffer, stats=stats, flags=flags)
    with atomic_path(chunk_path(folder, start)) as tmp:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())


def load_chunk(folder: Path, start: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A chunk's saved (stats, flags), or None when absent, unreadable or not ``n`` rows.
    NaN stats are kept only where the cutout was not predicted (its flags say so)."""
    from lenshpc.predict.kernels import NOT_PREDICTED
    path = chunk_path(folder, start)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stats, flags = z["stats"], z["flags"]
    except (OSError, ValueError, KeyError):
        return None
    if stats.shape != (n, len(TARGETS), len(STATS)) or flags.shape != (n,):
        return None
    predicted = (flags & NOT_PREDICTED) == 0
    if not np.isfinite(stats[predicted]).all():
        return None
    return stats, flags


def remove_partial(out: Path) -> None:
    """Remove every partial result beside ``out`` (all keys) and the lock file."""
    shutil.rmtree(partial_root(out), ignore_errors=True)
