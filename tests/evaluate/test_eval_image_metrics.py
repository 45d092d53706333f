"""The study's image figures (PSNR on percentile-scaled images, SSIM, ring SSIM), the
normalisation of the network input and Table 1's variants, against independent
computations: closed forms on constructed images and TensorFlow's own SSIM."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from lenshpc.config import UserError
from lenshpc.evaluate import compare, disk, image_metrics as IM, tables

#: One row of 101 pixels 0, 1, ..., 100: numpy's 1st and 99th percentiles are exactly 1, 99.
RAMP = np.arange(101.0)[None, :]


def test_each_image_is_clipped_to_its_own_1st_99th_percentiles():
    n = IM.percentile_normalize(RAMP)
    # by hand: (clip(v, 1, 99) - 1) / 98
    assert n[0, 0] == 0.0 and n[0, 1] == 0.0           # below P1: clipped to 0
    assert n[0, 100] == pytest.approx(1.0) and n[0, 99] == pytest.approx(1.0)   # above P99: 1
    assert n[0, 50] == pytest.approx(49 / 98)
    np.testing.assert_allclose(n, (np.clip(RAMP, 1, 99) - 1) / 98, rtol=1e-8)
    # a constant image becomes 0 (the authors' 1e-9 guard), not nan
    assert np.all(IM.percentile_normalize(np.full((4, 4), 3.0)) == 0)
    # NaN pixels stay NaN and are left out of the percentiles
    with_nan = RAMP.copy()
    with_nan[0, 50] = np.nan
    assert np.isnan(IM.percentile_normalize(with_nan)[0, 50])


def test_study_psnr_of_a_known_mse_and_its_invariance():
    pred = RAMP.copy()
    pred[0, 50] = 60.0           # the percentiles stay 1 and 99: one pixel off by 10 / 98
    mse = (10 / 98) ** 2 / 101
    assert IM.psnr_study(RAMP, pred) == pytest.approx(10 * math.log10(1 / mse), rel=1e-7)
    # each image on its own percentiles: an affine change of one image's flux is invisible
    assert IM.psnr_study(RAMP, 3 * RAMP + 7) > 150     # up to rounding and the 1e-9 guard
    assert IM.psnr_study(RAMP, RAMP) == math.inf
    # the authors' scaling by hand: a 4-pixel image whose P1, P99 are not pixel values
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    b = np.array([[0.0, 1.0], [1.0, 3.0]])
    lo_a, hi_a = 0.03, 2.97                    # numpy's linear percentiles of 0, 1, 2, 3
    lo_b, hi_b = 0.03, 2.94                    # of 0, 1, 1, 3: 0 + 0.03 (1 - 0), 1 + 0.97 (3 - 1)
    na = (np.clip(a, lo_a, hi_a) - lo_a) / (hi_a - lo_a)
    nb = (np.clip(b, lo_b, hi_b) - lo_b) / (hi_b - lo_b)
    assert IM.psnr_study(a, b) == pytest.approx(10 * math.log10(1 / np.mean((na - nb) ** 2)), rel=1e-6)


def test_ssim_of_identical_and_of_constant_images():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (24, 24))
    assert IM.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # two constant images: no structure term, luminance (2 x y + C1) / (x^2 + y^2 + C1)
    c1 = (0.01 * 1.0) ** 2
    x, y = 0.3, 0.6
    assert IM.ssim(np.full((16, 16), x), np.full((16, 16), y)) == pytest.approx(
        (2 * x * y + c1) / (x * x + y * y + c1), rel=1e-12)
    assert math.isnan(IM.ssim(np.full((16, 16), np.nan), a[:16, :16]))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert IM.ssim(a, b) == pytest.approx(IM.ssim(b, a)) and IM.ssim(a, b) < 0.9


def test_ssim_equals_tensorflows():
    """The authors call tf.image.ssim(a, b, max_val=1.0); the numpy transcription must agree."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    for shape, noise in (((32, 32), 0.05), ((40, 27), 0.3), ((11, 11), 0.1)):
        a = rng.uniform(0, 1, shape)
        b = np.clip(a + rng.normal(0, noise, shape), 0, 1)
        theirs = float(tf.image.ssim(a[..., None].astype(np.float32),
                                     b[..., None].astype(np.float32), max_val=1.0).numpy())
        assert IM.ssim(a, b) == pytest.approx(theirs, abs=2e-6), shape


def test_ring_mask_on_a_constructed_grid():
    # 5 x 5 pixels of 1 arcsec, centre pixel (2, 2) at the origin; ring 2 +- 0.5 arcsec
    mask = IM.ring_mask((5, 5), theta_E=2.0, pixel_scale=1.0, width=0.5)
    # distances 2 (4 pixels) and sqrt(5) (8 pixels) are inside; 1.41 and 2.83 are not
    expected = {(i, j) for i in range(5) for j in range(5)
                if 1.5 <= math.hypot(i - 2, j - 2) <= 2.5}
    assert {tuple(p) for p in np.argwhere(mask)} == expected and len(expected) == 12
    # an even grid is centred between pixels (lenstronomy's origin at (n - 1) / 2)
    even = IM.ring_mask((4, 4), theta_E=0.75, pixel_scale=1.0, width=0.1)
    assert even.sum() == 4 and even[1, 1] and even[2, 2] and even[1, 2] and even[2, 1]
    # an off-centre lens moves the ring: x shifts the columns
    shifted = IM.ring_mask((5, 5), theta_E=1.0, pixel_scale=1.0, width=0.1, center=(1.0, 0.0))
    assert shifted[2, 3 + 1] and shifted[2, 3 - 1] and not shifted[2, 1]


def test_ring_ssim_masks_both_images_with_the_true_ring():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (32, 32))
    assert IM.ssim_ring(a, a, 0.8, 0.08) == pytest.approx(1.0)
    # b: a with its pixels outside the ring shuffled (same pixel values, so the same
    # percentiles): only the outside differs, and the ring SSIM does not see it
    mask = IM.ring_mask(a.shape, 0.8, 0.08)
    assert 0 < mask.sum() < mask.size
    b = a.copy()
    b[~mask] = rng.permutation(a[~mask])
    assert IM.ssim_ring(a, b, 0.8, 0.08) == pytest.approx(1.0, abs=1e-12)
    assert IM.ssim(IM.percentile_normalize(a), IM.percentile_normalize(b)) < 0.6
    # a ring elsewhere (theta_E 0.4) does see it
    assert IM.ssim_ring(a, b, 0.4, 0.08) < 0.99
    p, s, r = IM.image_scores(a, b, 0.8, 0.08)
    assert p == IM.psnr_study(a, b) and r == pytest.approx(1.0, abs=1e-12)
    assert s == IM.ssim(IM.percentile_normalize(a), IM.percentile_normalize(b))


def test_job_normalize_comes_from_run_json():
    def job(run):
        return disk.JobRun("model1", 0, 0, disk.Path("."), run)
    assert disk.job_normalize(job({})) == "max"                       # before train records it
    assert disk.job_normalize(job({"train": {"batch_size": 8}})) == "max"
    assert disk.job_normalize(job({"train": {"normalize": "study"}})) == "study"
    with pytest.raises(UserError, match="train.normalize is 'minmax'"):
        disk.job_normalize(job({"train": {"normalize": "minmax"}}))


def test_predictor_normalises_its_input_like_training():
    tf = pytest.importorskip("tensorflow")
    from lenshpc.evaluate.predict import Predictor
    from lenshpc.train.preprocess import normalize
    model = tf.keras.Sequential([tf.keras.Input((6, 6, 1)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(4)])
    rng = np.random.default_rng(3)
    images = rng.uniform(0.2, 1.0, (5, 6, 6)).astype(np.float32)
    for kind in ("max", "study"):
        got = Predictor(model, normalize=kind).predict(images, batch_size=2)
        want = model(normalize(images, kind)[..., None], training=False).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(Predictor(model, normalize="study").predict(images, 5),
                           Predictor(model).predict(images, 5))


def _row(model, overrides="", study=True):
    row = {"model": model, "n_folds": 1, "folds": "0", "overrides": overrides}
    for name in tables.TABLE1:
        if study or name not in ("psnr_study_median", "ssim_median", "ssim_ring_median"):
            row[f"{name}_mean"], row[f"{name}_std"] = 1.0, 0.0
    return row


def test_table1_psnr_columns_and_variants():
    rows = [_row("model1"), _row("model4", "batch_size=64, standardize_targets=true")]
    head = tables.table1_markdown(rows, "both").splitlines()[0]
    assert "| PSNR median, study [dB] | PSNR median, MAX=1 [dB] | SSIM median | ring SSIM median |" \
        in head
    assert "MAX=1" not in tables.table1_markdown(rows, "study").splitlines()[0]
    assert "study" not in tables.table1_markdown(rows, "max1").splitlines()[0]
    md = tables.table1_markdown(rows)
    assert md.rstrip().endswith("Variants (overrides of the train section): model4: "
                                "batch_size=64, standardize_targets=true.")
    tex = tables.table1_latex(rows, "cap", "both")
    assert r"model4: batch\_size=64, standardize\_targets=true." in tex
    assert "1st--99th percentiles" in tex
    assert "overrides" in tables.table1_csv(rows).splitlines()[0].split(",")
    # a table1.csv from before the study's PSNR: the one PSNR column it had, no note
    old = [_row("model1", study=False)]
    del old[0]["overrides"]
    assert tables.table1_markdown(old).splitlines()[0].endswith("| PSNR median [dB] |")
    assert "Variants" not in tables.table1_markdown(old)


def test_overrides_of_a_model_entry_and_the_paper_comparison():
    assert tables.describe_overrides(SimpleNamespace(name="m")) == ""
    entry = SimpleNamespace(name="m", overrides=(("batch_size", 64), ("standardize_targets", True)))
    assert tables.describe_overrides(entry) == "batch_size=64, standardize_targets=true"
    assert tables.describe_overrides(SimpleNamespace(describe_overrides=lambda: "x=1")) == "x=1"
    # the comparison with the paper uses the study's PSNR, the MAX = 1 one for old rows
    new = {"n_folds": 1, "psnr_study_median_mean": 36.0, "psnr_study_median_std": 0.0,
           "psnr_median_mean": 30.0, "psnr_median_std": 0.0}
    old = {k: v for k, v in new.items() if not k.startswith("psnr_study")}
    assert compare._run_cell(new, ("psnr_study_median",), 1.0) == "36"
    assert compare._run_cell(old, ("psnr_study_median",), 1.0) == "30"
