"""Config sections of the simulate stage: the image grid, the dataset, the population."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from lenshpc.config.schema import UserError, _fmt, build, param

# --------------------------------------------------------------------------- distributions

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
    [low, high]."""

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
                raise UserError(f"config {path}.{key}: {_fmt(v)} is not a number")
            params[key] = float(v)
        if "sigma" in params and not params["sigma"] > 0:
            raise UserError(f"config {path}.sigma: {_fmt(given['sigma'])} must be > 0")
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


U = Distribution.of


def _positive_support(d: Distribution) -> str | None:
    low, _ = d.bounds
    return None if low > 0 else "must have support above 0 (give low > 0)"


def _axis_ratio_support(d: Distribution) -> str | None:
    low, high = d.bounds
    return None if 0 < low and high <= 1 else "must lie within (0, 1] (give 0 < low, high <= 1)"


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Image:
    """The image grid, PSF and noise (CSST wide-field pixels by default)."""

    size: int = param(64, ge=8, le=4096, unit="pixels",
                      doc="Side of the square image (one channel).")
    pixel_scale: float = param(0.074, gt=0, unit="arcsec/pixel", doc="Pixel scale (CSST: 0.074).")
    supersampling: int = param(1, ge=1, le=16,
                               doc="Supersampling factor of the ray-tracing grid (1 = none).")
    psf: Literal["none", "gaussian", "pixel"] = param("none", doc="PSF convolution.")
    psf_fwhm: float = param(0.15, gt=0, unit="arcsec", doc="FWHM of the Gaussian PSF.")
    psf_kernel: str | None = param(None, doc="Path of a .npy pixel PSF kernel (psf: pixel).")
    background_rms: float = param(0.0, ge=0, unit="normalised flux",
                                  doc="Gaussian background noise, relative to the image maximum.")
    exposure_time: float | None = param(None, gt=0, unit="s",
                                        doc="Exposure time for Poisson noise (null: none).")

    def validate(self, path: str) -> None:
        if self.psf == "pixel" and not self.psf_kernel:
            raise UserError(f"config {path}.psf_kernel: required when {path}.psf is 'pixel'")

    @property
    def noise(self) -> bool:
        return self.background_rms > 0 or self.exposure_time is not None

    @property
    def field_of_view(self) -> float:
        """Side of the image in arcsec."""
        return self.size * self.pixel_scale


@dataclass(frozen=True)
class Dataset:
    """Dataset size, cross-validation folds, held-out test set and sharding."""

    n_images: int = param(1000, ge=1, doc="Number of lens systems.")
    test_fraction: float = param(0.0837216608, ge=0, lt=1,
                                 doc="Fraction held out as test set (paper: 6,396 of 76,396).")
    n_folds: int = param(4, ge=2, le=100, doc="Cross-validation folds over the non-test items.")
    shard_size: int = param(200, ge=1, doc="Items per shard file: the unit of work and of "
                            "resume. Shards are dealt round-robin to ranks, so several per rank "
                            "balance the load.")
    compression: Literal["none", "gzip", "lzf"] = param("none", doc="HDF5 compression of images.")

    @property
    def n_test(self) -> int:
        """Number of held-out test items: round(n_images * test_fraction)."""
        return int(round(self.n_images * self.test_fraction))


@dataclass(frozen=True)
class LensMass:
    """SIE lens mass. e1, e2 are derived from q and phi (phi_q2_ellipticity)."""

    theta_E: Distribution = param(U("lognormal", median=0.8, sigma=0.55, low=0.07, high=3.65),
                                  unit="arcsec", check=_positive_support,
                                  doc="Einstein radius (assumed shape: reproduces the study's "
                                      "0.07-3.65 arcsec with strong positive skew).")
    q: Distribution = param(U("beta", a=4.0, b=1.6, low=0.2, high=1.0), check=_axis_ratio_support,
                            doc="Axis ratio (minor/major); assumed shape: 0.2-1, concentrated "
                                "towards high values as in the study.")
    phi: Distribution = param(Distribution.constant(10.0), unit="deg",
                              doc="Position angle (fixed at 10 deg in the study).")
    center_x: Distribution = param(Distribution.constant(0.0), unit="arcsec", doc="Centre x.")
    center_y: Distribution = param(Distribution.constant(0.0), unit="arcsec", doc="Centre y.")


@dataclass(frozen=True)
class LensLight:
    """SERSIC_ELLIPSE lens light, centred on the lens mass."""

    amp: Distribution = param(U("uniform", low=5.0, high=20.0), unit="flux",
                              doc="Amplitude at R_sersic (assumed; images are normalised).")
    R_sersic: Distribution = param(U("uniform", low=0.3, high=1.5), unit="arcsec",
                                   check=_positive_support,
                                   doc="Half-light radius (assumed 0.3-1.5).")
    n_sersic: Distribution = param(Distribution.constant(4.0), check=_positive_support,
                                   doc="Sersic index (assumed 4).")
    q: Distribution = param(U("uniform", low=0.6, high=1.0), check=_axis_ratio_support,
                            doc="Axis ratio.")
    phi: Distribution = param(Distribution.constant(10.0), unit="deg", doc="Position angle.")


@dataclass(frozen=True)
class SourceLight:
    """SERSIC_ELLIPSE source, centre given as an offset from the lens centre."""

    amp: Distribution = param(U("uniform", low=20.0, high=80.0), unit="flux",
                              doc="Amplitude at R_sersic (assumed).")
    R_sersic: Distribution = param(U("uniform", low=0.1, high=0.4), unit="arcsec",
                                   check=_positive_support, doc="Half-light radius (assumed).")
    n_sersic: Distribution = param(Distribution.constant(2.5), check=_positive_support,
                                   doc="Sersic index (assumed 2.5, between disc and elliptical).")
    q: Distribution = param(U("uniform", low=0.4, high=1.0), check=_axis_ratio_support,
                            doc="Axis ratio.")
    phi: Distribution = param(U("uniform", low=0.0, high=180.0), unit="deg",
                              doc="Position angle.")
    center_x: Distribution = param(U("truncnormal", mean=0.0, sigma=0.15, low=-0.4, high=0.4),
                                   unit="arcsec", doc="Offset from the lens centre, x.")
    center_y: Distribution = param(U("truncnormal", mean=0.0, sigma=0.15, low=-0.4, high=0.4),
                                   unit="arcsec", doc="Offset from the lens centre, y.")


@dataclass(frozen=True)
class Population:
    """Where lens-system parameters come from: named distributions, or a catalogue."""

    kind: Literal["parametric", "catalogue"] = param("parametric", doc="Parameter source.")
    catalogue: str | None = param(None, doc="CSV or HDF5 table of per-system parameters "
                                  "(kind: catalogue); path relative to the working directory.")
    lens_mass: LensMass = param(default_factory=LensMass, doc="SIE lens mass.")
    lens_light: LensLight = param(default_factory=LensLight, doc="Lens light.")
    source_light: SourceLight = param(default_factory=SourceLight, doc="Source light.")

    def validate(self, path: str) -> None:
        if self.kind == "catalogue" and not self.catalogue:
            raise UserError(f"config {path}.catalogue: required when {path}.kind is 'catalogue'")


__all__ = ["Dataset", "Distribution", "Image", "LensLight", "LensMass", "Population",
           "SourceLight", "build"]
