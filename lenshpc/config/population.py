"""Config section ``population``: where the lens systems' parameters come from (named
distributions per component, or a catalogue with its column mapping)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lenshpc.config.distribution import (
    PARAM_MAX,
    Distribution,
    Support,
    _axis_ratio,
    _einstein_radius,
    _half_light_radius,
    _sersic_index,
    dist,
)
from lenshpc.config.schema import Section, UserError, Value, _fmt, build, param


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
    mag: Distribution | None = param(None, unit="mag",
                                     doc="Total AB magnitude (null: amp as given). Replaces amp "
                                     "by the amplitude of that total flux in e-/s at "
                                     "image.zero_point (lenstronomy's SimAPI.magnitude2amplitude).")


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
    mag: Distribution | None = param(None, unit="mag",
                                     doc="Total (unlensed) AB magnitude (null: amp as given). "
                                     "Replaces amp by the amplitude of that total flux in e-/s "
                                     "at image.zero_point (lenstronomy's SimAPI).")


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
class CatalogueColumns(Value):
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
class Population(Section):
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


__all__ = ["CatalogueColumns", "Distribution", "LensLight", "LensMass", "Population",
           "SourceLight", "build"]
