"""The lens population: parameters of item i drawn from (seed, i) alone.

Every population parameter (``lens_mass.theta_E``, ``source_light.center_x``, ...) is a
:class:`~lenshpc.config.simulate.Distribution`. Item i draws one uniform number per
parameter from ``numpy.random.default_rng([seed, i, 0])`` and maps it through that
parameter's inverse CDF, so the values of item i depend only on (seed, i) and each
parameter's value only on its own distribution. Noise uses the separate stream
``default_rng([seed, i, 1])``.

Derived values: ``e1, e2`` of a component from its ``q`` and ``phi`` (deg) with
lenstronomy's ``phi_q2_ellipticity``; the lens light is centred on the lens mass; the
source centre is the lens centre plus the sampled offset.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import special

from lenshpc.config import UserError
from lenshpc.config.distribution import Distribution
from lenshpc.config.population import (
    Population,
    parameter_fields,
    value_allowed,
    values_refused,
)
from lenshpc.dataset.columns import LABEL_NAMES, TRUTH_NAMES  # noqa: F401 (re-exported)

#: Streams of an item's generator: population draws and noise draws.
POPULATION_STREAM, NOISE_STREAM = 0, 1

COMPONENTS = ("lens_mass", "lens_light", "source_light")

#: Every population parameter's name, ``<component>.<parameter>``.
ALLOWED_NAMES = frozenset(parameter_fields())


#: Optional parameters (null: not drawn), drawn after all the others so that a config
#: without them draws exactly what it drew before they existed.
OPTIONAL = ("mag",)


def parameter_names(population: Population) -> tuple[str, ...]:
    """Names ``<component>.<parameter>`` of the population's parameters a catalogue may
    give (every one, the optional magnitudes included), in draw order."""
    return tuple(f"{c}.{f.name}" for c in COMPONENTS
                 for f in dataclasses.fields(getattr(population, c)))


def distributions(population: Population) -> dict[str, Distribution]:
    """``{<component>.<parameter>: Distribution}`` in draw order: the required parameters,
    then the optional ones the config gives (``mag``)."""
    fields = [(c, f.name) for c in COMPONENTS for f in dataclasses.fields(getattr(population, c))]
    out = {f"{c}.{n}": getattr(getattr(population, c), n) for c, n in fields if n not in OPTIONAL}
    out.update({f"{c}.{n}": getattr(getattr(population, c), n) for c, n in fields
                if n in OPTIONAL and getattr(getattr(population, c), n) is not None})
    return out


def magnitude_amplitudes(values: dict[str, np.ndarray], zero_point: float) -> None:
    """Replace ``<light>.amp`` by the SERSIC_ELLIPSE amplitude whose total flux (e-/s) is
    that of ``<light>.mag`` at ``zero_point``, for the lights that have a magnitude, with
    lenstronomy's ``SimAPI.magnitude2amplitude`` (in place)."""
    from lenstronomy.SimulationAPI.sim_api import SimAPI
    lights = [c for c in ("lens_light", "source_light") if f"{c}.mag" in values]
    if not lights:
        return
    sim = SimAPI(num_pix=8, kwargs_single_band={"pixel_scale": 0.1, "exposure_time": 1.0,
                                               "magnitude_zero_point": zero_point},
                 kwargs_model={"lens_light_model_list": ["SERSIC_ELLIPSE"],
                               "source_light_model_list": ["SERSIC_ELLIPSE"]})
    n = len(values[f"{lights[0]}.mag"])
    e = {c: ellipticity(values[f"{c}.q"], values[f"{c}.phi"]) for c in lights}

    def kw(c: str, i: int) -> list[dict]:
        if c not in lights:
            return [{"amp": 1.0, "R_sersic": 1.0, "n_sersic": 1.0, "e1": 0.0, "e2": 0.0,
                     "center_x": 0.0, "center_y": 0.0, "magnitude": 99.0}]
        return [{"magnitude": float(values[f"{c}.mag"][i]), "R_sersic": float(values[f"{c}.R_sersic"][i]),
                 "n_sersic": float(values[f"{c}.n_sersic"][i]), "e1": float(e[c][0][i]),
                 "e2": float(e[c][1][i]), "center_x": 0.0, "center_y": 0.0}]
    amps = {c: np.empty(n) for c in lights}
    for i in range(n):
        lens_light, source, _ = sim.magnitude2amplitude(kw("lens_light", i), kw("source_light", i))
        for c, got in (("lens_light", lens_light), ("source_light", source)):
            if c in lights:
                amps[c][i] = got[0]["amp"]
    for c in lights:
        values[f"{c}.amp"] = amps[c]


def item_rng(seed: int, index: int, stream: int = POPULATION_STREAM) -> np.random.Generator:
    """The random generator of item ``index`` (stream 0: population, 1: noise)."""
    return np.random.default_rng([seed, index, stream])


# --------------------------------------------------------------------------- distributions


def _normal_cdf(x: float) -> float:
    return float(special.ndtr(x))


def ppf(d: Distribution, u: np.ndarray | float) -> np.ndarray:
    """Inverse CDF of distribution ``d`` at ``u`` in [0, 1): the value with that quantile.

    Truncated kinds (truncnormal, lognormal with low/high) use the CDF rescaled to the
    truncation interval, so every draw lies inside [low, high]."""
    u = np.asarray(u, dtype=np.float64)
    p = dict(d.params)
    if d.dist == "constant":
        return np.full_like(u, p["value"])
    if d.dist == "uniform":
        return p["low"] + u * (p["high"] - p["low"])
    if d.dist == "normal":
        return p["mean"] + p["sigma"] * special.ndtri(u)
    if d.dist == "truncnormal":
        a = _normal_cdf((p["low"] - p["mean"]) / p["sigma"])
        b = _normal_cdf((p["high"] - p["mean"]) / p["sigma"])
        x = p["mean"] + p["sigma"] * special.ndtri(a + u * (b - a))
        return np.clip(x, p["low"], p["high"])
    if d.dist == "lognormal":
        mu, s = math.log(p["median"]), p["sigma"]
        a = _normal_cdf((math.log(p["low"]) - mu) / s) if p["low"] > 0 else 0.0
        b = _normal_cdf((math.log(p["high"]) - mu) / s) if math.isfinite(p["high"]) else 1.0
        x = np.exp(mu + s * special.ndtri(a + u * (b - a)))
        return np.clip(x, p["low"], p["high"])
    if d.dist == "beta":
        return p["low"] + (p["high"] - p["low"]) * special.betaincinv(p["a"], p["b"], u)
    raise ValueError(f"unknown distribution {d.dist!r}")  # config validation prevents this


# --------------------------------------------------------------------------- systems


def ellipticity(q: np.ndarray, phi_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(e1, e2) from axis ratio ``q`` and position angle ``phi_deg`` (degrees)."""
    from lenstronomy.Util.param_util import phi_q2_ellipticity
    return phi_q2_ellipticity(np.deg2rad(phi_deg), q)


def systems(values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Truth rows and labels from population values (arrays of equal length n).

    ``values`` maps every name of :func:`parameter_names` to an array. Returns
    ``truth`` (n, len(TRUTH_NAMES)) float64 and ``labels`` (n, 4) float32
    (theta_E arcsec, q, e1, e2 of the lens mass)."""
    v = {k: np.asarray(x, dtype=np.float64) for k, x in values.items()}
    out: dict[str, np.ndarray] = {}
    for c in COMPONENTS:
        out[f"{c}.e1"], out[f"{c}.e2"] = ellipticity(v[f"{c}.q"], v[f"{c}.phi"])
    lens_x, lens_y = v["lens_mass.center_x"], v["lens_mass.center_y"]
    out.update({
        "lens_mass.theta_E": v["lens_mass.theta_E"],
        "lens_mass.center_x": lens_x, "lens_mass.center_y": lens_y,
        "lens_light.center_x": lens_x, "lens_light.center_y": lens_y,
        "source_light.center_x": lens_x + v["source_light.center_x"],
        "source_light.center_y": lens_y + v["source_light.center_y"],
    })
    for c in ("lens_light", "source_light"):
        for k in ("amp", "R_sersic", "n_sersic"):
            out[f"{c}.{k}"] = v[f"{c}.{k}"]
    truth = np.stack([np.broadcast_to(out[name], lens_x.shape) for name in TRUTH_NAMES], axis=-1)
    labels = np.stack([v["lens_mass.theta_E"], v["lens_mass.q"],
                       out["lens_mass.e1"], out["lens_mass.e2"]], axis=-1).astype(np.float32)
    return truth.astype(np.float64), labels


def draw(population: Population, seed: int, indices: np.ndarray | range) -> dict[str, np.ndarray]:
    """Population values of items ``indices``: ``{name: (n,) float64}``, from (seed, i) only."""
    dists = distributions(population)
    u = np.array([item_rng(seed, int(i)).random(len(dists)) for i in indices]).reshape(-1, len(dists))
    return {name: ppf(d, u[:, k]) for k, (name, d) in enumerate(dists.items())}


def sample(population: Population, seed: int, indices: np.ndarray | range,
           catalogue: dict[str, np.ndarray] | None = None,
           zero_point: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Truth rows and labels of items ``indices`` (see :func:`systems`).

    With a ``catalogue`` (``{parameter name: (rows,) array}``, see
    :mod:`lenshpc.simulate.catalogue`), item i takes its parameters from row i; parameters
    the catalogue lacks are drawn from the population's distributions. A light with a
    magnitude (``mag``, drawn or from the catalogue) gets the amplitude of that total flux
    in e-/s at ``zero_point`` (:func:`magnitude_amplitudes`)."""
    values = draw(population, seed, indices)
    if catalogue:
        idx = np.asarray(list(indices), dtype=np.int64)
        for name, column in catalogue.items():
            values[name] = np.asarray(column, dtype=np.float64)[idx]
            refuse_values(name, values[name], idx)
    if population.lens_light_shape == "mass":
        values["lens_light.q"] = values["lens_mass.q"]
        values["lens_light.phi"] = values["lens_mass.phi"]
    mags = [k for k in values if k.endswith(".mag")]
    if mags:
        if zero_point is None:
            raise UserError(f"{mags[0]}: magnitudes need image.zero_point (or an "
                            f"image.observation preset)")
        magnitude_amplitudes(values, zero_point)
    return systems(values)


def refuse_values(name: str, values: np.ndarray, indices: np.ndarray) -> None:
    """UserError if a catalogue value of ``name`` (items ``indices``) is one the config key
    ``name`` would refuse: checked again before anything is rendered, so no dataset holds
    one (:func:`lenshpc.simulate.catalogue.read_catalogue` refuses it first, naming the row)."""
    if name not in ALLOWED_NAMES:
        raise UserError(f"catalogue: {name!r} is not a population parameter")
    bad = np.flatnonzero(values_refused(name, values))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"catalogue value of item {int(indices[i])}, {name}: {values[i]!r} is "
                        f"out of range; allowed: {value_allowed(name)}")


# --------------------------------------------------------------------------- split


#: Split schemes (``dataset.split``).
SPLITS = ("random", "ordered")


def split(seed: int, n_images: int, n_test: int, n_folds: int,
          scheme: str = "random") -> np.ndarray:
    """Fold of every item: (N,) int8, -1 for the held-out test set, else 0..n_folds-1.

    random (default): depends only on (seed, N, n_test, n_folds): a dedicated generator
    permutes the items; the first ``n_test`` of the permutation are the test set, the rest
    are dealt round-robin into folds (sizes differ by at most one, equal when divisible).

    ordered (the study's scheme, independent of the seed): items 0 .. N - n_test - 1 (file
    or catalogue order) are the cross-validation set, item i in fold ``i % n_folds`` (as
    ``tf.data.Dataset.shard(n_folds, k)`` deals them); the last ``n_test`` items are the
    test set."""
    folds = np.empty(n_images, dtype=np.int8)
    if scheme == "ordered":
        folds[:n_images - n_test] = np.arange(n_images - n_test) % n_folds
        folds[n_images - n_test:] = -1
        return folds
    if scheme != "random":
        raise ValueError(f"unknown split scheme {scheme!r}")  # config validation prevents this
    order = np.random.default_rng([seed, 2**32 - 1]).permutation(n_images)
    folds[order[:n_test]] = -1
    folds[order[n_test:]] = np.arange(n_images - n_test) % n_folds
    return folds
