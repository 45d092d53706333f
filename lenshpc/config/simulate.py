"""Config sections of the simulate stage: the image grid, the dataset, the population."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from lenshpc.config.schema import UserError, _fmt, _text_hint, build, param

# --------------------------------------------------------------------------- distributions

#: Largest magnitude of any distribution parameter: beyond any physical value in arcsec,
#: degrees or flux, and small enough that every draw stays a finite float64.
PARAM_MAX = 1e6

#: Largest sigma of ln(x) of a lognormal (a factor e^5 = 148 per sigma; draws stay finite).
LOGNORMAL_SIGMA_MAX = 5.0

#: Parameters of every distribution kind: required names, then optional names with defaults.
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, float]]] = {
    "constant": (("value",), {}),
    "uniform": (("low", "high"), {}),
    "normal": (("mean", "sigma"), {}),
    "truncnormal": (("mean", "sigma", "low", "high"), {}),
    "lognormal": (("median", "sigma"), {"low": 0.0, "high": math.inf}),
    "beta": (("a", "b"), {"low": 0.0, "high": 1.0}),
}


@dataclass(frozen=True)
class Distribution:
    """One parameter's distribution: a number (constant) or ``{dist: KIND, ...}``.

    Kinds: constant(value); uniform(low, high); normal(mean, sigma);
    truncnormal(mean, sigma, low, high); lognormal(median, sigma [, low, high]) where
    sigma is that of ln(x) and low/high truncate; beta(a, b [, low, high]) scaled to
    [low, high]. Every parameter is a finite number of magnitude at most ``PARAM_MAX``."""

    dist: str
    params: tuple[tuple[str, float], ...]

    def __getitem__(self, key: str) -> float:
        return dict(self.params)[key]

    @property
    def bounds(self) -> tuple[float, float]:
        """The support (low, high) of the distribution."""
        p = dict(self.params)
        if self.dist == "constant":
            return p["value"], p["value"]
        return p.get("low", -math.inf), p.get("high", math.inf)

    @classmethod
    def constant(cls, value: float) -> "Distribution":
        return cls("constant", (("value", float(value)),))

    @classmethod
    def of(cls, dist: str, **params: float) -> "Distribution":
        return cls.from_yaml({"dist": dist, **params}, "<default>")

    @classmethod
    def from_yaml(cls, value: Any, path: str) -> "Distribution":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_number(value, path)
            return cls.constant(value)
        if not isinstance(value, dict) or "dist" not in value:
            raise UserError(f"config {path}: {_fmt(value)} is not a number or a mapping with "
                            f"'dist' (one of {', '.join(DISTRIBUTIONS)})")
        kind = value["dist"]
        if kind not in DISTRIBUTIONS:
            raise UserError(f"config {path}.dist: {_fmt(kind)} is not allowed; "
                            f"expected one of {', '.join(DISTRIBUTIONS)}")
        required, optional = DISTRIBUTIONS[kind]
        given = {k: v for k, v in value.items() if k != "dist"}
        for key in given:
            if key not in required and key not in optional:
                raise UserError(f"config {path}.{key}: unknown key for dist {kind}; allowed: "
                                f"{', '.join((*required, *optional))}")
        params = {}
        for key in (*required, *optional):
            if key not in given:
                if key in optional:
                    params[key] = optional[key]
                    continue
                raise UserError(f"config {path}.{key}: required for dist {kind}")
            v = given[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"config {path}.{key}: {_fmt(v)} is not a number{_text_hint(v)}")
            _check_number(v, f"{path}.{key}")
            params[key] = float(v)
        if "sigma" in params and not params["sigma"] > 0:
            raise UserError(f"config {path}.sigma: {_fmt(given['sigma'])} must be > 0")
        if kind == "lognormal" and params["sigma"] > LOGNORMAL_SIGMA_MAX:
            raise UserError(f"config {path}.sigma: {_fmt(given['sigma'])} is out of range; "
                            f"allowed for lognormal (sigma of ln x): <= {LOGNORMAL_SIGMA_MAX:g}")
        for key in ("a", "b", "median"):
            if key in params and not params[key] > 0:
                raise UserError(f"config {path}.{key}: {_fmt(given[key])} must be > 0")
        if "low" in params and not params["low"] < params["high"]:
            raise UserError(f"config {path}: low={params['low']:g} must be below "
                            f"high={params['high']:g}")
        return cls(kind, tuple(params.items()))

    def to_yaml(self) -> Any:
        if self.dist == "constant":
            return self["value"]
        return {"dist": self.dist, **{k: v for k, v in self.params if math.isfinite(v)}}

    @staticmethod
    def doc_allowed() -> str:
        return "a number, or {dist: constant/uniform/normal/truncnormal/lognormal/beta, ...}"


def _check_number(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise UserError(f"config {path}: {_fmt(value)} is not a finite number")
    if abs(value) > PARAM_MAX:
        raise UserError(f"config {path}: {_fmt(value)} is out of range; allowed: "
                        f"magnitude <= {PARAM_MAX:g}")


dist = Distribution.of


class Support:
    """The values a parameter may take, within (low, high] (low = 0: above 0).

    As a config ``check``, ``support(d)`` refuses a distribution whose support leaves the
    interval; :meth:`outside` finds the values that leave it (catalogue values)."""

    def __init__(self, low: float, high: float, unit: str = ""):
        self.low, self.high, self.unit = low, high, unit
        self.allowed = f"values within ({low:g}, {high:g}]" + (f" {unit}" if unit else "")

    def __call__(self, d: Distribution) -> str | None:
        lo, hi = d.bounds
        if lo > self.low and hi <= self.high:
            return None
        give = "give low and high" if d.dist in ("normal", "lognormal") else "adjust it"
        return f"must have its {self.allowed} ({give})"

    def outside(self, values: Any) -> Any:
        """Boolean mask of the (finite) ``values`` outside (low, high]."""
        import numpy as np
        v = np.asarray(values, dtype=np.float64)
        return ~((v > self.low) & (v <= self.high))


#: Supports of the parameters with a physical range: beyond anything a lens survey sees,
#: but finite, so no draw can overflow the renderer.
_einstein_radius = Support(0, 100, "arcsec")
_half_light_radius = Support(0, 100, "arcsec")
_sersic_index = Support(0, 20)
_axis_ratio = Support(0, 1)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Image:
    """The image grid, PSF and noise (CSST wide-field pixels by default)."""

    size: int = param(64, ge=8, le=4096, unit="pixels",
                      doc="Side of the square image (one channel). The study does not state it: "
                      "64 for quick runs, 112 (8.3 arcsec) in the paper config (assumed).")
    pixel_scale: float = param(0.074, ge=1e-4, le=10, unit="arcsec/pixel",
                               doc="Pixel scale (CSST: 0.074).")
    supersampling: int = param(1, ge=1, le=16,
                               doc="Supersampling factor of the ray-tracing grid (1 = none; the "
                               "study does not state it, the paper config uses 3) (assumed).")
    supersampling_mode: Literal["full", "adaptive"] = param(
        "full", doc="full: every pixel supersampled (the reference). adaptive: only the pixels "
        "where the image at pixel centres has |Laplacian| above adaptive_threshold, and their "
        "neighbours, are supersampled; the others take their centre value. With the default "
        "threshold, adaptive differs from full by at most 1e-4 of the normalised image "
        "(docs/performance.md).")
    adaptive_threshold: float = param(5e-4, gt=0, le=1, unit="normalised flux",
                                      doc="|Laplacian| (5-point, of the centre-sampled image "
                                      "divided by its maximum) above which a pixel is "
                                      "supersampled in adaptive mode.")
    psf: Literal["none", "gaussian", "pixel"] = param("none", doc="PSF convolution (none in the "
                                                      "study).")
    psf_fwhm: float = param(0.15, gt=0, le=10, unit="arcsec",
                            doc="FWHM of the Gaussian PSF; at most the field of view.")
    psf_kernel: str | None = param(None, doc="Path of a .npy pixel PSF kernel (psf: pixel).")
    background_rms: float = param(0.0, ge=0, le=100, unit="normalised flux",
                                  doc="Gaussian background noise, relative to the image maximum.")
    exposure_time: float | None = param(None, gt=0, le=1e8, unit="s",
                                        doc="Exposure time for Poisson noise (null: none).")

    def validate(self, path: str) -> None:
        if self.psf == "pixel" and not self.psf_kernel:
            raise UserError(f"config {path}.psf_kernel: required when {path}.psf is 'pixel'")
        if self.psf == "gaussian" and self.psf_fwhm > self.field_of_view:
            # the kernel would be larger than the image (and could exhaust memory)
            raise UserError(f"config {path}.psf_fwhm: {self.psf_fwhm:g} arcsec is wider than the "
                            f"{self.field_of_view:g} arcsec field ({path}.size x "
                            f"{path}.pixel_scale)")

    @property
    def noise(self) -> bool:
        return self.background_rms > 0 or self.exposure_time is not None

    @property
    def field_of_view(self) -> float:
        """Side of the image in arcsec."""
        return self.size * self.pixel_scale


#: Smallest shard file that min_shards asks for (bytes): below a few MB, opening and
#: closing a file costs a noticeable share of simulate (22% at 20 images of 64x64).
MIN_SHARD_BYTES = 4e6


@dataclass(frozen=True)
class Dataset:
    """Dataset size, cross-validation folds, held-out test set and sharding."""

    n_images: int = param(1000, ge=1, le=10**9, doc="Number of lens systems (the study: "
                          "76,396).")
    test_fraction: float = param(0.0837216608, ge=0, lt=1,
                                 doc="Fraction held out as test set (paper: 6,396 of 76,396).")
    n_folds: int = param(4, ge=2, le=100, doc="Cross-validation folds over the non-test items.")
    shard_mb: float = param(256.0, ge=0.001, le=1e6, unit="MB",
                            doc="Largest size of a shard file (10^6 bytes of images, labels and "
                            "truth, before compression): 10^7 paper images (112x112) make about "
                            "2,000 files. The shard is the unit of work and of resume; ranks "
                            "take shards round-robin.")
    min_shards: int = param(64, ge=1, le=10**6,
                            doc="Fewest shards of a dataset (smaller shards than shard_mb allows, "
                            "but not below 4 MB), so the shards balance the load of that many "
                            "ranks: e.g. 76,396 paper images make 64 shards of about 60 MB rather "
                            "than 15 of 256 MB.")
    shard_size: int | None = param(None, ge=1, le=100_000,
                                   doc="Items per shard file, instead of shard_mb and min_shards "
                                   "(kept for configs written before them; null: sized in "
                                   "bytes).")
    split: Literal["random", "ordered"] = param(
        "random", doc="How items are dealt into test set and folds. random: a permutation "
        "seeded by seed (test set first, the rest round-robin into folds). ordered: the study's "
        "scheme, in item (catalogue row) order: the first n_images - n_test items are the "
        "cross-validation set, item i in fold i % n_folds; the last n_test items are the test "
        "set.")
    compression: Literal["none", "gzip", "lzf", "zstd", "blosc"] = param(
        "none", doc="HDF5 compression of the images, with the byte-shuffle filter (gzip, lzf, "
        "zstd; blosc shuffles itself). gzip and lzf are read by any h5py; zstd and blosc need "
        "the hdf5plugin package imported (lenshpc does; others: import hdf5plugin). Sizes and "
        "speeds: docs/performance.md.")

    def items_per_shard(self, item_bytes: int) -> int:
        """Items per shard file for items of ``item_bytes`` bytes each (uncompressed):
        ``shard_size`` if given; else ``ceil(n_images / min_shards)``, raised to fill at
        least MIN_SHARD_BYTES and capped to fit in ``shard_mb``; at least 1."""
        if self.shard_size is not None:
            return self.shard_size
        item_bytes = max(1, item_bytes)
        by_bytes = int(self.shard_mb * 1e6 // item_bytes)
        balanced = max(-(-self.n_images // self.min_shards), int(MIN_SHARD_BYTES // item_bytes))
        return max(1, min(by_bytes, balanced))

    @property
    def n_test(self) -> int:
        """Number of held-out test items: round(n_images * test_fraction)."""
        return int(round(self.n_images * self.test_fraction))


@dataclass(frozen=True)
class LensMass:
    """SIE lens mass. e1, e2 are derived from q and phi (phi_q2_ellipticity)."""

    theta_E: Distribution = param(dist("lognormal", median=0.8, sigma=0.55, low=0.07, high=3.65),
                                  unit="arcsec", check=_einstein_radius,
                                  doc="Einstein radius. The study's range 0.07-3.65 arcsec with "
                                      "strong positive skew; the shape (assumed).")
    q: Distribution = param(dist("truncnormal", mean=0.85, sigma=0.25, low=0.2, high=1.0),
                            check=_axis_ratio,
                            doc="Axis ratio (minor/major). The study's range 0.2-1, concentrated "
                                "towards high values; the shape (assumed) puts enough systems "
                                "near q = 0.2 that e1, e2 reach the study's 0.63, 0.23.")
    phi: Distribution = param(Distribution.constant(10.0), unit="deg",
                              doc="Position angle (fixed at 10 deg in the study: it gives "
                                  "e1 <= 0.63 and e2 <= 0.23 at q = 0.2).")
    center_x: Distribution = param(Distribution.constant(0.0), unit="arcsec", doc="Centre x.")
    center_y: Distribution = param(Distribution.constant(0.0), unit="arcsec", doc="Centre y.")


@dataclass(frozen=True)
class LensLight:
    """SERSIC_ELLIPSE lens light, centred on the lens mass."""

    amp: Distribution = param(dist("uniform", low=5.0, high=20.0), unit="flux",
                              doc="Amplitude at R_sersic; images are normalised (assumed).")
    R_sersic: Distribution = param(dist("uniform", low=0.3, high=1.5), unit="arcsec",
                                   check=_half_light_radius,
                                   doc="Half-light radius, 0.3-1.5 arcsec (assumed).")
    n_sersic: Distribution = param(Distribution.constant(4.0), check=_sersic_index,
                                   doc="Sersic index, 4 (assumed).")
    q: Distribution = param(dist("uniform", low=0.6, high=1.0), check=_axis_ratio,
                            doc="Axis ratio (assumed).")
    phi: Distribution = param(Distribution.constant(10.0), unit="deg",
                              doc="Position angle, that of the lens mass (assumed).")


@dataclass(frozen=True)
class SourceLight:
    """SERSIC_ELLIPSE source, centre given as an offset from the lens centre."""

    amp: Distribution = param(dist("uniform", low=20.0, high=80.0), unit="flux",
                              doc="Amplitude at R_sersic (assumed).")
    R_sersic: Distribution = param(dist("uniform", low=0.1, high=0.4), unit="arcsec",
                                   check=_half_light_radius, doc="Half-light radius (assumed).")
    n_sersic: Distribution = param(Distribution.constant(2.5), check=_sersic_index,
                                   doc="Sersic index, 2.5: between disc (1) and elliptical (4) "
                                   "(assumed).")
    q: Distribution = param(dist("uniform", low=0.4, high=1.0), check=_axis_ratio,
                            doc="Axis ratio (assumed).")
    phi: Distribution = param(dist("uniform", low=0.0, high=180.0), unit="deg",
                              doc="Position angle (assumed).")
    center_x: Distribution = param(dist("truncnormal", mean=0.0, sigma=0.15, low=-0.4, high=0.4),
                                   unit="arcsec", doc="Offset from the lens centre, x (assumed).")
    center_y: Distribution = param(dist("truncnormal", mean=0.0, sigma=0.15, low=-0.4, high=0.4),
                                   unit="arcsec", doc="Offset from the lens centre, y (assumed).")


#: The population's components, in draw order (``<component>.<parameter>`` names).
COMPONENTS: dict[str, type] = {"lens_mass": LensMass, "lens_light": LensLight,
                               "source_light": SourceLight}


def parameter_fields() -> dict[str, Any]:
    """``{<component>.<parameter>: dataclasses.Field}`` of every population parameter."""
    import dataclasses
    return {f"{c}.{f.name}": f for c, cls in COMPONENTS.items() for f in dataclasses.fields(cls)}


def value_allowed(name: str) -> str:
    """What a single value of parameter ``name`` may be (config and catalogue alike)."""
    check = parameter_fields()[name].metadata.get("check")
    if isinstance(check, Support):
        return check.allowed
    return f"a finite number of magnitude <= {PARAM_MAX:g}"


def values_refused(name: str, values: Any) -> Any:
    """Boolean mask of the float ``values`` that parameter ``name`` refuses: not finite,
    magnitude above PARAM_MAX, or outside the parameter's support (its config check)."""
    import numpy as np
    v = np.asarray(values, dtype=np.float64)
    check = parameter_fields()[name].metadata.get("check")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(v) | (np.abs(v) > PARAM_MAX)
        return bad | check.outside(v) if isinstance(check, Support) else bad


#: Catalogue column presets: ``{parameter: column name, or a number (the same for every
#: row)}``. csst: the CSST forecast tables of Cao et al. (github.com/caoxiaoyue/sim_csst_lens,
#: paper/catalog/*.csv), read as the study reads them: lens light with the lens' axis ratio,
#: lens angle fixed at 10 deg, first source (``_s0``). Units and angle conventions are
#: lenshpc's (arcsec; degrees counter-clockwise from +x to the major axis, as lenstronomy):
#: no conversion (docs/dataset.md).
CATALOGUE_PRESETS: dict[str, dict[str, str | float]] = {
    "csst": {"lens_mass.theta_E": "thetaE_s0", "lens_mass.q": "q_l", "lens_mass.phi": 10.0,
             "lens_light.R_sersic": "re_l", "lens_light.q": "q_l", "lens_light.phi": 10.0,
             "source_light.R_sersic": "re_s0", "source_light.q": "q_s0",
             "source_light.phi": "pa_s0", "source_light.center_x": "x_s0",
             "source_light.center_y": "y_s0"},
}


@dataclass(frozen=True)
class CatalogueColumns:
    """Which catalogue column each parameter takes: a preset name, or
    ``{<component>.<parameter>: column name or a number}``."""

    preset: str | None
    columns: tuple[tuple[str, str | float], ...]

    @property
    def mapping(self) -> dict[str, str | float]:
        return dict(self.columns)

    @classmethod
    def from_yaml(cls, value: Any, path: str) -> "CatalogueColumns":
        if isinstance(value, str):
            if value not in CATALOGUE_PRESETS:
                raise UserError(f"config {path}: {_fmt(value)} is not a preset; expected one of "
                                f"{', '.join(CATALOGUE_PRESETS)}, or a mapping of parameter "
                                f"names to column names")
            return cls(value, tuple(CATALOGUE_PRESETS[value].items()))
        if not isinstance(value, dict) or not value:
            raise UserError(f"config {path}: {_fmt(value)} is not a preset name or a non-empty "
                            f"mapping of parameter names to column names")
        fields = parameter_fields()
        columns: list[tuple[str, str | float]] = []
        for key, column in value.items():
            sub = f"{path}.{key}"
            if key not in fields:
                raise UserError(f"config {sub}: not a population parameter; allowed: "
                                f"{', '.join(fields)}")
            if isinstance(column, str):
                if not column.strip():
                    raise UserError(f"config {sub}: an empty column name")
                columns.append((key, column.strip()))
                continue
            if isinstance(column, bool) or not isinstance(column, (int, float)):
                raise UserError(f"config {sub}: {_fmt(column)} is not a column name or a number")
            if values_refused(key, [column])[0]:
                raise UserError(f"config {sub}: {_fmt(column)} is out of range; allowed: "
                                f"{value_allowed(key)}")
            columns.append((key, float(column)))
        return cls(None, tuple(columns))

    def to_yaml(self) -> Any:
        return self.preset if self.preset is not None else dict(self.columns)


def _columns_doc(_: Any) -> None:
    return None


_columns_doc.allowed = (f"a preset ({', '.join(CATALOGUE_PRESETS)}), or {{parameter: column "  # type: ignore[attr-defined]
                        f"name or number}}")


@dataclass(frozen=True)
class Population:
    """Where lens-system parameters come from: named distributions, or a catalogue."""

    kind: Literal["parametric", "catalogue"] = param("parametric", doc="Parameter source.")
    catalogue: str | None = param(None, doc="CSV or HDF5 table of per-system parameters "
                                  "(kind: catalogue); path relative to the working directory.")
    catalogue_columns: CatalogueColumns | None = param(
        None, check=_columns_doc,
        doc="Which catalogue column each parameter takes (kind: catalogue). null: columns "
        "named like the parameters (lens_mass.theta_E, ...), every column one of them. csst: "
        "Cao et al.'s CSST forecast tables as the study reads them (thetaE_s0, q_l, re_l, "
        "q_s0, re_s0, pa_s0, x_s0, y_s0; lens angle 10 deg; no unit conversion). A mapping "
        "{lens_mass.theta_E: COLUMN, lens_mass.phi: 10, ...}: a number is that value for "
        "every row; other columns of the file are ignored. Parameters not mapped come from "
        "their distributions. Every value must be allowed by the parameter's key "
        "(docs/dataset.md).")
    lens_light_shape: Literal["own", "mass"] = param(
        "own", doc="Shape of the lens light. own: its q and phi come from population."
        "lens_light; mass: the lens light takes the lens mass' q and phi, item by item (the "
        "authors' generate_lenses.py).")
    lens_mass: LensMass = param(default_factory=LensMass, doc="SIE lens mass.")
    lens_light: LensLight = param(default_factory=LensLight, doc="Lens light.")
    source_light: SourceLight = param(default_factory=SourceLight, doc="Source light.")

    def validate(self, path: str) -> None:
        if self.kind == "catalogue" and not self.catalogue:
            raise UserError(f"config {path}.catalogue: required when {path}.kind is 'catalogue'")
        if self.kind != "catalogue" and self.catalogue_columns is not None:
            raise UserError(f"config {path}.catalogue_columns: given, but {path}.kind is "
                            f"{self.kind!r} (set it to 'catalogue', or remove the key)")


__all__ = ["CatalogueColumns", "Dataset", "Distribution", "Image", "LensLight", "LensMass", "Population",
           "SourceLight", "build"]
