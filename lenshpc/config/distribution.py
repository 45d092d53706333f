"""One population parameter's distribution (a number or ``{dist: KIND, ...}``) and the
supports of the parameters with a physical range, shared by the config and the catalogue
reader (a catalogue value passes the same bounds as the config key it stands for)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lenshpc.config.schema import UserError, Value, _fmt, _text_hint

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
class Distribution(Value):
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
