"""The study's figures (docs/method.md section 5) from plain arrays, as matplotlib Figures.

Each ``fig_*`` function takes arrays and labels and returns a
:class:`matplotlib.figure.Figure` (no pyplot, rendered by Agg; the one global state
touched is matplotlib's rcParams font sizes, set by :func:`_figure`);
:func:`save` writes it as PNG and PDF atomically. Parameters are ``theta_E`` (arcsec),
``q``, ``e1``, ``e2`` (dimensionless); images are normalised to a maximum of 1 and
shown on sky axes in arcsec.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.colors import AsinhNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lenshpc.evaluate.metrics import GAUSS_COVERAGE

#: Axis label of each parameter, with its unit.
LABELS = {"theta_E": r"$\theta_E$ [arcsec]", "q": r"$q$ (axis ratio)", "e1": r"$e_1$",
          "e2": r"$e_2$"}
SYMBOLS = {"theta_E": r"$\theta_E$", "q": r"$q$", "e1": r"$e_1$", "e2": r"$e_2$"}
#: Linear width of the asinh stretch, in units of the image maximum.
ASINH_WIDTH = 0.02
FLUX_TICKS = (0, 0.01, 0.03, 0.1, 0.3, 1)
FONT = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
        "xtick.labelsize": 8, "ytick.labelsize": 8}


def _figure(width: float, height: float) -> Figure:
    import matplotlib
    matplotlib.rcParams.update(FONT)
    return Figure(figsize=(width, height), layout="constrained")


def _colors(n: int) -> list:
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def save(fig: Figure, directory: Path, name: str, dpi: int) -> list[Path]:
    """Write ``directory/name.png`` (at ``dpi``) and ``name.pdf``, each atomically."""
    from lenshpc.io import atomic_path
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = directory / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi)
        paths.append(path)
    return paths


def _extent(size: int, pixel_scale: float) -> list[float]:
    half = size * pixel_scale / 2
    return [-half, half, -half, half]


# --------------------------------------------------------------------------- 1, 2: the sample


def fig_parameter_distributions(values: np.ndarray, test_values: np.ndarray | None,
                                names: Sequence[str]) -> Figure:
    """Histograms of each parameter over the sample (``values`` (N, P)), the test set
    (``test_values``) outlined."""
    fig = _figure(7.0, 5.0)
    axes = fig.subplots(2, 2).ravel()
    for j, (ax, name) in enumerate(zip(axes, names, strict=False)):
        v = values[:, j]
        lo, hi = float(np.min(v)), float(np.max(v))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
        ax.hist(v, bins=bins, color="0.6", label=f"all ({len(v)})")
        if test_values is not None:
            ax.hist(test_values[:, j], bins=bins, histtype="step", color="C3", lw=1.2,
                    label=f"test ({len(test_values)})")
        ax.set_xlabel(LABELS.get(name, name))
        ax.set_ylabel("systems per bin")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.text(0.97, 0.95, f"range {lo:.2f} to {hi:.2f}", transform=ax.transAxes,
                ha="right", va="top", fontsize=8)
    axes[0].legend(loc="center right")
    fig.suptitle("Lens-model parameters of the sample")
    return fig


def fig_example_images(images: np.ndarray, params: np.ndarray, pixel_scale: float,
                       indices: Sequence[int]) -> Figure:
    """A grid of example images (n, H, W), each titled with its theta_E and q."""
    n = len(images)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _figure(1.9 * cols + 0.8, 1.95 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
    norm = AsinhNorm(linear_width=ASINH_WIDTH, vmin=0, vmax=1)
    im = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        im = ax.imshow(images[i], origin="lower", cmap="magma", norm=norm,
                       extent=_extent(images[i].shape[0], pixel_scale))
        ax.set_title(rf"#{indices[i]}: $\theta_E$={params[i, 0]:.2f}$''$, $q$={params[i, 1]:.2f}",
                     fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("y [arcsec]")
        if i >= n - cols:
            ax.set_xlabel("x [arcsec]")
    fig.colorbar(im, ax=axes.tolist(), label="normalised flux (asinh stretch)", shrink=0.8,
                 ticks=FLUX_TICKS, format="%g")
    fig.suptitle("Example test images")
    return fig


# --------------------------------------------------------------------------- 3: training


def fig_training_curves(histories: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
                        mae_unit: str = "") -> Figure:
    """Loss and MAE per epoch: ``histories[model]`` is one dict per fold with arrays
    ``epoch, loss, val_loss, mae, val_mae``. Lines are the mean over folds, bands the
    standard deviation (where at least two folds reached that epoch)."""
    models = list(histories)
    fig = _figure(max(3.0 * len(models), 5.0), 4.8)
    axes = fig.subplots(2, len(models), squeeze=False, sharex="col")
    for c, model in enumerate(models):
        folds = histories[model]
        mae_label = f"MAE\n({mae_unit})" if mae_unit else "MAE"
        for r, (metric, ylabel) in enumerate((("loss", "loss\n(weighted MSE, standardised)"),
                                              ("mae", mae_label))):
            ax = axes[r, c]
            for key, label, color in ((metric, "training", "C0"),
                                      (f"val_{metric}", "validation", "C1")):
                n_ep = max((len(h["epoch"]) for h in folds), default=0)
                if n_ep == 0:
                    continue
                table = np.full((len(folds), n_ep), np.nan)
                for k, h in enumerate(folds):
                    table[k, :len(h[key])] = h[key]
                epochs = np.arange(1, n_ep + 1)
                count = np.sum(~np.isnan(table), axis=0)
                mean = np.array([np.mean(col[~np.isnan(col)]) for col in table.T])
                std = np.array([np.std(col[~np.isnan(col)]) for col in table.T])
                ax.plot(epochs, mean, color=color, lw=1.3, label=f"{label} (mean)")
                band = count >= 2
                if band.any():
                    ax.fill_between(epochs[band], (mean - std)[band], (mean + std)[band],
                                    color=color, alpha=0.25, lw=0,
                                    label=r"$\pm 1\sigma$ over folds" if key == metric else None)
            values = np.concatenate([np.asarray(h[k], float) for h in folds
                                     for k in (metric, f"val_{metric}")])
            values = values[np.isfinite(values)]
            # a log axis only when the curve spans more than a decade (early epochs dominate)
            if values.size and values.min() > 0 and values.max() / values.min() > 10:
                ax.set_yscale("log")
            if c == 0:
                ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == 0:
                ax.set_title(f"{model} ({len(folds)} fold{'s' if len(folds) != 1 else ''})")
            else:
                ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("Training and validation loss and MAE per epoch")
    return fig


# --------------------------------------------------------------------------- 4, 5: image space


def fig_psnr_distributions(panels: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """PSNR histograms per model (all folds' test images), medians marked; one panel per
    PSNR definition (``panels[definition][model]``, the definition titling its panel).
    Infinite values (perfect re-renders) are counted in the legend, not drawn."""
    fig = _figure(7.5, 3.4 * len(panels) + 0.4)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (definition, psnr) in zip(axes, panels.items(), strict=True):
        _psnr_panel(ax, psnr)
        ax.set_xlabel("PSNR [dB]")
        ax.set_title(f"PSNR: {definition}", fontsize=8)
    fig.suptitle("PSNR of the re-rendered test images")
    return fig


def _psnr_panel(ax, psnr: Mapping[str, np.ndarray]) -> None:
    finite_all = np.concatenate([p[np.isfinite(p)] for p in psnr.values()] or [np.zeros(0)])
    if finite_all.size:
        lo, hi = np.floor(finite_all.min()), np.ceil(finite_all.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    else:
        bins = np.linspace(0, 1, 2)
    ax.axvspan(30, 40, color="0.92", zorder=0, label="30-40 dB (good)")
    for (model, p), color in zip(psnr.items(), _colors(len(psnr)), strict=True):
        valid = p[~np.isnan(p)]
        finite = valid[np.isfinite(valid)]
        n_inf = int(np.sum(np.isinf(valid)))
        med = float(np.median(valid)) if valid.size else math.nan
        extra = f", {n_inf} perfect (inf)" if n_inf else ""
        if finite.size:
            ax.hist(finite, bins=bins, histtype="step", color=color, lw=1.4,
                    label=f"{model} (n={valid.size}{extra})")
        if math.isfinite(med):
            ax.axvline(med, color=color, ls="--", lw=1.2, label=f"{model} median {med:.1f} dB")
        elif valid.size:
            ax.plot([], [], " ", label=f"{model} median inf dB{extra}")
    ax.set_ylabel("test images per bin")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


def fig_triptych(true_image: np.ndarray, predicted: Mapping[str, np.ndarray],
                 pixel_scale: float, title: str) -> Figure:
    """One system: the true image, the image re-rendered from each model's predicted
    parameters (top row) and the residual true - predicted under it (bottom row); asinh
    stretch, residuals on one symmetric scale. ``predicted`` maps a panel title to an image."""
    n = len(predicted)
    fig = _figure(2.3 * (n + 1) + 1.2, 4.9)
    axes = fig.subplots(2, n + 1, sharex=True, sharey=True)
    extent = _extent(true_image.shape[0], pixel_scale)
    norm = AsinhNorm(linear_width=ASINH_WIDTH, vmin=0, vmax=1)
    resid = {m: true_image.astype(np.float64) - img for m, img in predicted.items()}
    rmax = max([float(np.max(np.abs(r))) for r in resid.values()] + [1e-6])
    rnorm = AsinhNorm(linear_width=ASINH_WIDTH * rmax, vmin=-rmax, vmax=rmax)
    a = axes[0, 0].imshow(true_image, origin="lower", cmap="magma", norm=norm, extent=extent)
    axes[0, 0].set_title("true image")
    axes[1, 0].set_axis_off()
    b = None
    for c, (label, img) in enumerate(predicted.items(), start=1):
        axes[0, c].imshow(img, origin="lower", cmap="magma", norm=norm, extent=extent)
        axes[0, c].set_title(label, fontsize=8)
        b = axes[1, c].imshow(resid[label], origin="lower", cmap="RdBu_r", norm=rnorm,
                              extent=extent)
        axes[1, c].set_title("residual (true - predicted)", fontsize=8)
        axes[1, c].set_xlabel("x [arcsec]")
    axes[0, 0].set_xlabel("x [arcsec]")
    axes[0, 0].xaxis.set_tick_params(labelbottom=True)
    axes[0, 0].set_ylabel("y [arcsec]")
    axes[1, 1].set_ylabel("y [arcsec]")
    axes[1, 1].yaxis.set_tick_params(labelleft=True)
    fig.colorbar(a, ax=axes[0, :].tolist(), label="normalised flux (asinh)", shrink=0.9,
                 ticks=FLUX_TICKS, format="%g")
    if b is not None:
        top = float(f"{rmax:.1g}") if float(f"{rmax:.1g}") <= rmax else rmax
        ticks = sorted({0.0, top, -top, top / 10, -top / 10})
        fig.colorbar(b, ax=axes[1, :].tolist(), label="residual flux (asinh)", shrink=0.9,
                     ticks=ticks, format="%.2g")
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- 6, 7, 8: parameters


def fig_predicted_vs_true(true: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray],
                          folds: Mapping[str, np.ndarray], names: Sequence[str],
                          r2: Mapping[str, Sequence[float]]) -> Figure:
    """Predicted vs true per parameter (columns) and model (rows), with the 1:1 line;
    ``true[model]``, ``pred[model]`` are (N, P) over all folds, ``folds[model]`` (N,) the
    fold of each point (one colour per fold), ``r2[model]`` per parameter."""
    models = list(pred)
    fig = _figure(2.2 * len(names) + 0.4, 2.2 * len(models) + 0.5)
    axes = fig.subplots(len(models), len(names), squeeze=False)
    for r, model in enumerate(models):
        for c, name in enumerate(names):
            ax = axes[r, c]
            y, yhat = true[model][:, c], pred[model][:, c]
            lo = float(min(np.min(y), np.nanmin(yhat))) if y.size else 0.0
            hi = float(max(np.max(y), np.nanmax(yhat))) if y.size else 1.0
            pad = 0.03 * (hi - lo if hi > lo else 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8, label="1:1")
            fold_ids = np.unique(folds[model])
            for k, color in zip(fold_ids, _colors(len(fold_ids)), strict=True):
                sel = folds[model] == k
                ax.scatter(y[sel], yhat[sel], s=4, alpha=0.6, color=color, lw=0, rasterized=True,
                           label=f"fold {k}")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_aspect("equal")
            ax.text(0.04, 0.96, f"$R^2$ = {r2[model][c]:.3f}", transform=ax.transAxes,
                    va="top", fontsize=8)
            unit = " [arcsec]" if name == "theta_E" else ""
            ax.set_xlabel(f"true {SYMBOLS.get(name, name)}{unit}")
            ax.set_ylabel(f"predicted {SYMBOLS.get(name, name)}{unit}")
            if c == 0:
                ax.annotate(model, xy=(0, 0.5), xycoords="axes fraction", xytext=(-52, 0),
                            textcoords="offset points", rotation=90, va="center", ha="center",
                            fontsize=10, fontweight="bold")
    axes[0, 0].legend(loc="lower right", fontsize=7, markerscale=2)
    fig.suptitle("Predicted vs true parameters of the test set (all folds)")
    return fig


def _boxes(ax, data: Sequence[np.ndarray], models: Sequence[str], colors, percent: bool) -> None:
    positive = [d[d > 0] for d in data]
    use_log = all(p.size for p in positive)
    shown = positive if use_log else data
    shown = [d if d.size else np.array([np.nan]) for d in shown]
    bp = ax.boxplot(shown, whis=(5, 95), showfliers=False, patch_artist=True, widths=0.6)
    for patch, color in zip(bp["boxes"], colors, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    for med in bp["medians"]:
        med.set_color("k")
    if use_log:
        ax.set_yscale("log")
    top = [np.nanpercentile(d, 95) if np.isfinite(d).any() else np.nan for d in shown]
    for i, d in enumerate(data):
        m = float(np.median(d)) if d.size else math.nan
        y = top[i] if np.isfinite(top[i]) else 0
        ax.annotate(f"{100 * m:.1f}%" if percent else f"{m:.3f}", xy=(i + 1, y), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(1, len(models) + 1), models, rotation=30)
    ax.margins(y=0.12)


def fig_relative_error_boxes(rel_err: Mapping[str, Sequence[np.ndarray]],
                             names: Sequence[str],
                             scaled_err: Mapping[str, Sequence[np.ndarray]] | None = None,
                             below_floor: Mapping[str, Sequence[int]] | None = None,
                             floor: float | None = None) -> Figure:
    """Top row: box plots of the study's ``|pred - true| / |true|`` per parameter (panels)
    and model (boxes), ``rel_err[model][j]`` pooling all folds. Bottom row (with
    ``scaled_err``): ``|pred - true| / std(true)``, which does not divide by each truth.
    ``below_floor[model][j]`` items with ``|true| < floor`` are written under the panel
    titles (they stay in both rows). Boxes: quartiles; whiskers: 5th-95th percentiles;
    the median is written above each box."""
    models = list(rel_err)
    rows = 2 if scaled_err is not None else 1
    fig = _figure(2.1 * len(names) + 0.6, 3.3 * rows + 0.4)
    axes = fig.subplots(rows, len(names), squeeze=False)
    colors = _colors(len(models))
    for c, name in enumerate(names):
        ax = axes[0, c]
        _boxes(ax, [np.asarray(rel_err[m][c]) for m in models], models, colors, percent=True)
        title = SYMBOLS.get(name, name)
        if below_floor is not None and floor is not None:
            counts = ", ".join(str(int(below_floor[m][c])) for m in models)
            title += f"\n|true| < {floor:g}: {counts}"
        ax.set_title(title, fontsize=9)
        if rows == 2:
            _boxes(axes[1, c], [np.asarray(scaled_err[m][c]) for m in models], models, colors,
                   percent=False)
    axes[0, 0].set_ylabel(r"relative error $|\hat y - y| / |y|$")
    if rows == 2:
        axes[1, 0].set_ylabel(r"$|\hat y - y|$ / std($y$)")
    fig.suptitle("Errors on the test set (box: quartiles, whiskers: 5-95%, median on top)")
    return fig


def fig_calibration(true: Mapping[str, np.ndarray], mean: Mapping[str, np.ndarray],
                    std: Mapping[str, np.ndarray], names: Sequence[str],
                    no_dropout: Sequence[str] = ()) -> Figure:
    """MC-dropout calibration: the fraction of true values inside mean +- k sigma against
    the Gaussian expectation, k from 0 to 3, per parameter; 1 and 2 sigma marked. Models
    in ``no_dropout`` (zero spread) are labelled so."""
    from scipy.special import erf
    ks = np.linspace(0, 3, 61)
    nominal = erf(ks / math.sqrt(2))
    fig = _figure(2.2 * len(names) + 0.4, 2.8)
    axes = fig.subplots(1, len(names), squeeze=False, sharey=True)[0]
    for c, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, label="ideal")
        for model, color in zip(mean, _colors(len(mean)), strict=True):
            y, mu, s = true[model][:, c], mean[model][:, c], std[model][:, c]
            observed = [float(np.mean(np.abs(y - mu) <= k * s)) for k in ks]
            label = f"{model} (no dropout: zero spread)" if model in no_dropout else model
            ax.plot(nominal, observed, color=color, lw=1.2, label=label)
            for k, marker in ((1, "o"), (2, "s")):
                ax.plot(GAUSS_COVERAGE[k], float(np.mean(np.abs(y - mu) <= k * s)), marker,
                        color=color, ms=4)
        for k in (1, 2):
            ax.axvline(GAUSS_COVERAGE[k], color="0.7", lw=0.7, ls=":")
        ax.set_xlabel(r"expected coverage of $\pm k\sigma$")
        ax.set_title(f"{SYMBOLS.get(name, name)}  (o: 1$\\sigma$, s: 2$\\sigma$)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        if c == 0:
            ax.set_ylabel("fraction of true values inside")
    axes[0].legend(loc="upper left", fontsize=7)
    fig.suptitle("MC-dropout calibration on the test set")
    return fig
