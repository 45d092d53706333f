"""Observation presets: a survey and band give the image keys of a real instrument.

``image.observation: {survey, band}`` fills every image key it implies that the config
does not give itself: ``pixel_scale``, ``psf`` and ``psf_fwhm`` (a Gaussian of the band's
FWHM), ``zero_point``, ``sky_brightness``, ``exposure_time`` (the total, all exposures),
``num_exposures``, ``read_noise`` and ``dark_current``. A key given in the config wins
over the preset (and the resolved config, stored with the dataset, lists every value).

Sources:

- ``csst-wf`` (bands g, r, i, z): Cao et al.'s CSST wide-field forecast, the public
  repository caoxiaoyue/sim_csst_lens (MIT), file ``paper/simulation/wf/csst_setting.yaml``
  (commit 734604ad): ``dpix`` 0.074"; ``zero_mag`` 26.23/26.04/25.85/25.27 for
  ``zero_exp_time`` 1 s; ``sky_mag`` 22.57/22.10/21.87/21.86 mag/arcsec^2; ``exp_time``
  300 s in total over ``n_exp`` 2 exposures (their ``add_noise_to_image_gaussian`` takes
  ``total_exposure_time``); ``readout`` 5 e-; ``dark_current`` 0.02 e-/s/pixel;
  ``psfs_fwhm`` 0.051/0.064/0.076/0.089" (Gaussian); ``gains`` 1 (counts are electrons).
- ``euclid`` (VIS, Y, J, H), ``lsst`` (u, g, r, i, z, y), ``hst`` (WFC3_F160W, F160W,
  TDLMC_F160W), ``des`` (g, r, i, z, Y), ``roman`` (F062 ... F184, F146), ``jwst``
  (F115W ... F444W): lenstronomy's ``lenstronomy.SimulationAPI.ObservationConfig``
  classes of the installed lenstronomy, read when the config is loaded (not copied
  here), with their default coadd settings. Their ``exposure_time`` is per exposure:
  lenshpc's is their ``exposure_time x num_exposures``. Their sources are in each
  class' module docstring. They have no dark current (0). A band whose lenstronomy PSF
  is a pixel kernel with no FWHM needs ``image.psf: pixel`` and ``image.psf_kernel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lenshpc.config.schema import Section, UserError, _fmt, param

#: Cao et al.'s CSST wide-field numbers (csst_setting.yaml, see the module doc), per band.
CSST_WF = {
    "pixel_scale": 0.074, "exposure_time": 300.0, "num_exposures": 2, "read_noise": 5.0,
    "dark_current": 0.02,
    "bands": {"g": {"zero_point": 26.23, "sky_brightness": 22.57, "psf_fwhm": 0.051},
              "r": {"zero_point": 26.04, "sky_brightness": 22.10, "psf_fwhm": 0.064},
              "i": {"zero_point": 25.85, "sky_brightness": 21.87, "psf_fwhm": 0.076},
              "z": {"zero_point": 25.27, "sky_brightness": 21.86, "psf_fwhm": 0.089}},
}

#: survey -> (lenstronomy ObservationConfig module and class, its bands)
LENSTRONOMY_SURVEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "euclid": ("Euclid", ("VIS", "Y", "J", "H")),
    "lsst": ("LSST", ("u", "g", "r", "i", "z", "y")),
    "hst": ("HST", ("WFC3_F160W", "F160W", "TDLMC_F160W")),
    "des": ("DES", ("g", "r", "i", "z", "Y")),
    "roman": ("Roman", ("F062", "F087", "F106", "F129", "F158", "F184", "F146")),
    "jwst": ("JWST", ("F115W", "F150W", "F200W", "F277W", "F356W", "F444W")),
}

#: Every survey and its bands.
SURVEYS: dict[str, tuple[str, ...]] = {"csst-wf": tuple(CSST_WF["bands"]),  # type: ignore[arg-type]
                                       **{k: v[1] for k, v in LENSTRONOMY_SURVEYS.items()}}

#: The image keys an observation preset fills.
IMPLIED_KEYS = ("pixel_scale", "psf", "psf_fwhm", "zero_point", "sky_brightness",
                "exposure_time", "num_exposures", "read_noise", "dark_current")


def _survey_allowed(value: Any) -> str | None:
    return None if value is None or value in SURVEYS else \
        f"is not a survey; expected one of {', '.join(SURVEYS)}"


_survey_allowed.allowed = f"null or one of {', '.join(SURVEYS)}"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Observation(Section):
    """A survey and band whose instrument numbers fill the image keys (module doc)."""

    survey: str | None = param(None, check=_survey_allowed,
                               doc="null (no preset), csst-wf (Cao et al.'s CSST wide field, "
                               "caoxiaoyue/sim_csst_lens paper/simulation/wf/csst_setting.yaml), "
                               "or a survey of lenstronomy's SimulationAPI.ObservationConfig: "
                               "euclid, lsst, hst, des, roman, jwst (docs/predict.md lists "
                               "every number).")
    band: str | None = param(None, doc="The survey's band: csst-wf g, r, i, z; euclid VIS, Y, "
                             "J, H; lsst u, g, r, i, z, y; hst WFC3_F160W, F160W, TDLMC_F160W; "
                             "des g, r, i, z, Y; roman F062, F087, F106, F129, F158, F184, "
                             "F146; jwst F115W, F150W, F200W, F277W, F356W, F444W.")

    def validate(self, path: str) -> None:
        if self.survey is None:
            if self.band is not None:
                raise UserError(f"config {path}.band: {_fmt(self.band)} given without "
                                f"{path}.survey")
            return
        if self.band not in SURVEYS[self.survey]:
            raise UserError(f"config {path}.band: {_fmt(self.band)} is not a band of "
                            f"{self.survey}; expected one of {', '.join(SURVEYS[self.survey])}")


def lenstronomy_band(survey: str, band: str) -> dict[str, Any]:
    """lenstronomy's ``kwargs_single_band()`` of ``survey`` and ``band`` (its defaults)."""
    import importlib
    name = LENSTRONOMY_SURVEYS[survey][0]
    module = importlib.import_module(f"lenstronomy.SimulationAPI.ObservationConfig.{name}")
    return dict(getattr(module, name)(band=band).kwargs_single_band())


def preset_values(survey: str, band: str) -> dict[str, Any]:
    """The image keys (IMPLIED_KEYS) of ``survey`` and ``band``: lenshpc's units (arcsec,
    mag, total exposure in s, e-, e-/s/pixel)."""
    if survey == "csst-wf":
        b = CSST_WF["bands"][band]  # type: ignore[index]
        return {"pixel_scale": CSST_WF["pixel_scale"], "psf": "gaussian",
                "psf_fwhm": b["psf_fwhm"], "zero_point": b["zero_point"],
                "sky_brightness": b["sky_brightness"], "exposure_time": CSST_WF["exposure_time"],
                "num_exposures": CSST_WF["num_exposures"], "read_noise": CSST_WF["read_noise"],
                "dark_current": CSST_WF["dark_current"]}
    kw = lenstronomy_band(survey, band)
    n_exp = int(kw.get("num_exposures", 1))
    out: dict[str, Any] = {"pixel_scale": float(kw["pixel_scale"]), "zero_point": float(kw["magnitude_zero_point"]),
           "sky_brightness": float(kw["sky_brightness"]),
           "exposure_time": float(kw["exposure_time"]) * n_exp, "num_exposures": n_exp,
           "read_noise": float(kw.get("read_noise") or 0.0), "dark_current": 0.0}
    if kw.get("seeing"):
        out.update(psf="gaussian", psf_fwhm=float(kw["seeing"]))
    else:   # a pixel kernel lenstronomy does not ship: the config gives it (psf: pixel)
        out["psf"] = "pixel"
    return out


def fill_image(data: Any, path: str) -> Any:
    """The image section's YAML mapping with the keys its ``observation`` implies added
    where the mapping does not give them (anything else is returned as it is)."""
    if not isinstance(data, dict) or not isinstance(data.get("observation"), dict):
        return data
    obs = data["observation"]
    survey, band = obs.get("survey"), obs.get("band")
    if survey is None or survey not in SURVEYS or band not in SURVEYS[survey]:
        return data   # Observation.validate names the problem
    return {**preset_values(survey, band), **data}
