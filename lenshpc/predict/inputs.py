"""The cutouts ``lenshpc predict`` reads: FITS images and cubes, folders of them, HDF5
``images`` datasets, and positions cut out of a mosaic through its WCS.

:func:`scan` opens every input once (headers and shapes only) and lists its cutouts as
:class:`Cutout` records, so that an unreadable input is refused before any work;
:func:`read_pixels` reads one record's pixels later, on whichever rank predicts it.
Pixel scales come from each file's celestial WCS (``proj_plane_pixel_scales``), a
``PIXSCALE`` keyword, an HDF5 ``pixel_scale`` attribute, or ``--pixel-scale``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc.config import UserError
from lenshpc.io import file_sha256
from lenshpc.simulate.render import FITS_SUFFIXES, fits_pixel_scale

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


@dataclass(frozen=True)
class Cutout:
    """Where one cutout's pixels are: ``kind`` 'fits' (``hdu``, ``plane`` of a cube or -1),
    'hdf5' (``plane`` of ``images``) or 'mosaic' (``ra``, ``dec`` in degrees, ``row`` of the
    positions table). ``pixel_scale`` in arcsec (None: unknown)."""

    kind: str
    path: str
    hdu: int = 0
    plane: int = -1
    row: int = -1
    ra: float = float("nan")
    dec: float = float("nan")
    pixel_scale: float | None = None

    @property
    def source(self) -> str:
        """What the catalogue's ``source`` column says: file and HDU/plane, or position."""
        if self.kind == "fits":
            return f"{self.path}[{self.hdu}]" + (f"[{self.plane}]" if self.plane >= 0 else "")
        if self.kind == "hdf5":
            return f"{self.path}:images[{self.plane}]"
        return f"{self.path}@{self.ra:.7f},{self.dec:+.7f} (row {self.row})"


def _fits_files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file()
                       and p.name.lower().endswith(FITS_SUFFIXES + HDF5_SUFFIXES))
        if not found:
            raise UserError(f"{path}: a folder without FITS or HDF5 files")
        return found
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return [path]


def _celestial_wcs(header):
    from astropy.wcs import WCS, FITSFixedWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # noqa: BLE001 - astropy raises many types for a bad WCS
            return None
    return wcs if wcs.has_celestial else None


def _scan_fits(path: Path, pixel_scale: float | None) -> list[Cutout]:
    from astropy.io import fits
    out: list[Cutout] = []
    try:
        with fits.open(path, memmap=False) as hdus:
            for k, hdu in enumerate(hdus):
                if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                    continue
                shape = hdu.shape
                if len(shape) not in (2, 3) or 0 in shape:
                    continue
                scale = pixel_scale if pixel_scale is not None else fits_pixel_scale(hdu.header)
                planes = range(shape[0]) if len(shape) == 3 else [-1]
                out += [Cutout("fits", str(path), hdu=k, plane=p, pixel_scale=scale) for p in planes]
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise UserError(f"{path}: not a readable FITS file ({str(exc).splitlines()[0]})") from None
    if not out:
        raise UserError(f"{path}: no 2-d image or 3-d cube HDU")
    return out


def _scan_hdf5(path: Path, pixel_scale: float | None) -> list[Cutout]:
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if "images" not in f or len(f["images"].shape) != 3:
                raise UserError(f"{path}: no 3-d 'images' dataset (N, H, W)")
            n = f["images"].shape[0]
            attr = f["images"].attrs.get("pixel_scale", f.attrs.get("pixel_scale"))
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    scale = pixel_scale if pixel_scale is not None else (float(attr) if attr is not None else None)
    return [Cutout("hdf5", str(path), plane=i, pixel_scale=scale) for i in range(n)]


def _column(table, names: tuple[str, ...], what: str, where: str) -> np.ndarray:
    for col in table.colnames:
        if col.lower() in names:
            return np.asarray(table[col], dtype=np.float64)
    raise UserError(f"--positions {where}: no {what} column (one of {', '.join(names)})")


def _scan_mosaic(image: Path, positions: Path, pixel_scale: float | None) -> list[Cutout]:
    from astropy.io import fits
    from astropy.table import Table
    try:
        with fits.open(image, memmap=False) as hdus:
            hdu = next((h for h in hdus if h.data is not None and h.data.ndim == 2), None)
            if hdu is None:
                raise UserError(f"--image {image}: no 2-d image HDU")
            wcs = _celestial_wcs(hdu.header)
    except OSError as exc:
        raise UserError(f"--image {image}: not a readable FITS file ({exc})") from None
    if wcs is None:
        raise UserError(f"--image {image}: no celestial WCS to place the positions with")
    try:
        table = Table.read(positions, format="ascii.csv" if positions.suffix.lower() == ".csv"
                           else None)
    except Exception as exc:  # noqa: BLE001 - astropy's readers raise many types
        raise UserError(f"--positions {positions}: not a readable table ({str(exc).splitlines()[0]})"
                        ) from None
    ra = _column(table, ("ra", "ra_deg", "raj2000"), "RA", str(positions))
    dec = _column(table, ("dec", "dec_deg", "dej2000", "decj2000"), "Dec", str(positions))
    scale = pixel_scale if pixel_scale is not None else fits_pixel_scale(hdu.header)
    return [Cutout("mosaic", str(image), row=i, ra=float(a), dec=float(d), pixel_scale=scale)
            for i, (a, d) in enumerate(zip(ra, dec, strict=True))]


def scan(inputs: list[str], image: str | None, positions: str | None,
         pixel_scale: float | None) -> tuple[list[Cutout], dict[str, str]]:
    """Every cutout of the inputs, in order, and ``{file: sha256}`` of every file read.
    UserError (one line naming the file) for anything unreadable or of the wrong kind."""
    if (image is None) != (positions is None):
        raise UserError("--image and --positions go together (a mosaic and its RA/Dec table)")
    if not inputs and image is None:
        raise UserError("no input: give FITS or HDF5 files or folders, or --image and --positions")
    cutouts: list[Cutout] = []
    files: list[Path] = []
    for item in inputs:
        for path in _fits_files(Path(item)):
            name = path.name.lower()
            if name.endswith(FITS_SUFFIXES):
                cutouts += _scan_fits(path, pixel_scale)
            elif name.endswith(HDF5_SUFFIXES):
                cutouts += _scan_hdf5(path, pixel_scale)
            else:
                raise UserError(f"{path}: not a FITS (.fits, .fit, .fts, .fits.gz) or HDF5 "
                                f"(.h5, .hdf5) file")
            files.append(path)
    if image is not None and positions is not None:
        cutouts += _scan_mosaic(Path(image), Path(positions), pixel_scale)
        files += [Path(image), Path(positions)]
    if not cutouts:
        raise UserError("the inputs hold no cutout")
    try:
        sums = {str(p): file_sha256(p) for p in files}
    except OSError as exc:
        raise UserError(f"{exc.filename}: cannot be read ({exc.strerror})") from None
    return cutouts, sums


# --------------------------------------------------------------------------- pixels


def read_pixels(c: Cutout, size: int) -> tuple[np.ndarray, bool]:
    """(pixels (h, w) float64, at the mosaic's edge) of cutout ``c``; a mosaic cutout has
    ``size`` pixels a side (of the mosaic), NaN where it leaves the mosaic."""
    if c.kind == "fits":
        from astropy.io import fits
        with fits.open(c.path, memmap=False) as hdus:
            data = hdus[c.hdu].data
            return np.array(data if c.plane < 0 else data[c.plane], dtype=np.float64), False
    if c.kind == "hdf5":
        import h5py
        with h5py.File(c.path, "r") as f:
            return np.array(f["images"][c.plane], dtype=np.float64), False
    return _mosaic_cutout(c, size)


_MOSAICS: dict[str, Any] = {}


def _mosaic(path: str):
    """(data, wcs) of a mosaic, kept open for the process (memory-mapped)."""
    if path not in _MOSAICS:
        from astropy.io import fits
        hdus = fits.open(path, memmap=True)
        hdu = next(h for h in hdus if h.data is not None and h.data.ndim == 2)
        _MOSAICS[path] = (hdu.data, _celestial_wcs(hdu.header), hdus)
    return _MOSAICS[path][:2]


def close_mosaics() -> None:
    """Close the mosaics :func:`read_pixels` keeps open."""
    while _MOSAICS:
        _, (_, _, hdus) = _MOSAICS.popitem()
        hdus.close()


def _mosaic_cutout(c: Cutout, size: int) -> tuple[np.ndarray, bool]:
    """``size`` x ``size`` pixels of the mosaic around (ra, dec), NaN outside it, and
    whether the cutout reaches past the mosaic's edge."""
    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D, NoOverlapError
    data, wcs = _mosaic(c.path)
    position = SkyCoord(c.ra, c.dec, unit="deg")
    x, y = (float(v) for v in wcs.world_to_pixel(position))
    ny, nx = data.shape
    half = size / 2
    edge = x - half < -0.5 or y - half < -0.5 or x + half > nx - 0.5 or y + half > ny - 0.5
    try:
        cut = Cutout2D(data, position, (size, size), wcs=wcs, mode="partial",
                       fill_value=np.nan, copy=True)
    except NoOverlapError:
        return np.full((size, size), np.nan), True
    return np.asarray(cut.data, dtype=np.float64), bool(edge)
