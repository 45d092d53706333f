"""Population: distributions, e1/e2 <-> q/phi, the study's sample, splits, catalogues."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from scipy import stats

from lenshpc.config import UserError, load, loads
from lenshpc.config.simulate import Distribution
from lenshpc.simulate import population as pop
from lenshpc.simulate.catalogue import read_catalogue
from lenshpc.simulate.render import TRUTH_NAMES
from tests.conftest import ROOT

U = np.random.default_rng(7).random(20000)

SCIPY = {
    "uniform": (Distribution.of("uniform", low=-1, high=3), stats.uniform(-1, 4)),
    "normal": (Distribution.of("normal", mean=2, sigma=0.5), stats.norm(2, 0.5)),
    "truncnormal": (Distribution.of("truncnormal", mean=0, sigma=0.15, low=-0.4, high=0.2),
                    stats.truncnorm(-0.4 / 0.15, 0.2 / 0.15, 0, 0.15)),
    "lognormal": (Distribution.of("lognormal", median=0.8, sigma=0.5), stats.lognorm(0.5, scale=0.8)),
    "beta": (Distribution.of("beta", a=4, b=1.6, low=0.2, high=1.0), stats.beta(4, 1.6, 0.2, 0.8)),
}


@pytest.mark.parametrize("kind", SCIPY)
def test_draws_follow_the_configured_distribution(kind):
    dist, reference = SCIPY[kind]
    x = pop.ppf(dist, U)
    assert stats.kstest(x, reference.cdf).pvalue > 0.01
    assert abs(np.mean(x) - reference.mean()) < 4 * reference.std() / math.sqrt(len(x))


def test_truncated_lognormal_stays_in_bounds_and_keeps_its_shape():
    dist = Distribution.of("lognormal", median=0.8, sigma=0.55, low=0.07, high=3.65)
    x = pop.ppf(dist, U)
    assert x.min() >= 0.07 and x.max() <= 3.65
    full = stats.lognorm(0.55, scale=0.8)
    a, b = full.cdf(0.07), full.cdf(3.65)
    truncated_cdf = lambda v: (full.cdf(np.clip(v, 0.07, 3.65)) - a) / (b - a)  # noqa: E731
    assert stats.kstest(x, truncated_cdf).pvalue > 0.01


def test_constant_is_constant():
    assert np.all(pop.ppf(Distribution.constant(10.0), U[:10]) == 10.0)


def test_ellipticity_matches_the_formula_and_inverts():
    from lenstronomy.Util.param_util import ellipticity2phi_q
    q = np.array([0.2, 0.5, 0.9, 1.0])
    e1, e2 = pop.ellipticity(q, np.full(4, 10.0))
    f = (1 - q) / (1 + q)
    np.testing.assert_allclose(e1, f * np.cos(np.deg2rad(20)))
    np.testing.assert_allclose(e2, f * np.sin(np.deg2rad(20)))
    # the study's ranges are pinned by phi = 10 deg at q = 0.2
    assert e1[0] == pytest.approx(0.626, abs=1e-3) and e2[0] == pytest.approx(0.228, abs=1e-3)
    assert e1[-1] == 0 and e2[-1] == 0
    phi, q_back = ellipticity2phi_q(e1[:3], e2[:3])
    np.testing.assert_allclose(q_back, q[:3])
    np.testing.assert_allclose(np.rad2deg(phi), 10.0)


def test_default_population_reproduces_the_study_sample():
    cfg = load(ROOT / "configs" / "paper.yaml")
    truth, labels = pop.sample(cfg.population, cfg.seed, range(5000))
    theta_E, q, e1, e2 = labels.T
    assert 0.07 <= theta_E.min() and theta_E.max() <= 3.65
    assert stats.skew(theta_E) > 0.5 and np.mean(theta_E < 1.5) > 0.8
    assert 0.2 <= q.min() and q.max() <= 1.0 and np.median(q) > 0.7
    assert 0 <= e1.min() and e1.max() <= 0.63 and stats.skew(e1) > 0.3
    assert 0 <= e2.min() and e2.max() <= 0.23 and stats.skew(e2) > 0.3
    # fixed position angle: e2 / e1 = tan(20 deg) for every system
    np.testing.assert_allclose(e2 / e1, np.tan(np.deg2rad(20)), rtol=1e-4)
    names = list(TRUTH_NAMES)
    np.testing.assert_array_equal(truth[:, names.index("lens_mass.theta_E")].astype(np.float32), theta_E)
    np.testing.assert_array_equal(truth[:, names.index("lens_mass.e1")].astype(np.float32), e1)
    assert np.all(np.isfinite(truth))
    lens_x = truth[:, names.index("lens_mass.center_x")]
    np.testing.assert_array_equal(truth[:, names.index("lens_light.center_x")], lens_x)
    offset = truth[:, names.index("source_light.center_x")] - lens_x
    low, high = cfg.population.source_light.center_x.bounds
    assert low <= offset.min() and offset.max() <= high


#: The study's Figure 3 ranges of the labels (METHOD.md section 1).
STUDY_RANGES = {"theta_E": (0.07, 3.65), "q": (0.2, 1.0), "e1": (0.0, 0.63), "e2": (0.0, 0.23)}


def test_paper_population_covers_the_study_ranges():
    """All 76,396 draws of the paper config reach each end of every label's range to within
    2% of its width, stay inside it, and keep the study's shapes."""
    cfg = load(ROOT / "configs" / "paper.yaml")
    _, labels = pop.sample(cfg.population, cfg.seed, range(cfg.dataset.n_images))
    assert labels.shape == (76396, 4)
    for k, name in enumerate(pop.LABEL_NAMES):
        x, (low, high) = labels[:, k], STUDY_RANGES[name]
        tol = 0.02 * (high - low)
        assert low - 1e-6 <= x.min() <= low + tol, (name, x.min())
        assert high - tol <= x.max() <= high + 1e-6, (name, x.max())
        # not reached by a lone outlier: several systems lie in each 2% end bin (the CSST
        # forecast's lens q puts about 8 of 76,396 at q <= 0.207, the top bin of e1)
        assert np.sum(x <= low + tol) >= 5 and np.sum(x >= high - tol) >= 5, name
    theta_E, q, e1, e2 = labels.T
    assert stats.skew(theta_E) > 1 and np.mean(theta_E < 1.5) > 0.8
    assert stats.skew(q) < 0 and np.median(q) > 0.7 and np.mean(q > 0.6) > 0.75
    assert stats.skew(e1) > 0.5 and stats.skew(e2) > 0.5


def test_free_position_angle_is_one_switch_away():
    cfg = load(ROOT / "configs" / "realistic.yaml")
    _, labels = pop.sample(cfg.population, cfg.seed, range(2000))
    e1, e2 = labels[:, 2], labels[:, 3]
    assert e1.min() < -0.1 and e2.min() < -0.1


def test_item_depends_only_on_seed_and_index():
    cfg = loads(None)
    t_all, l_all = pop.sample(cfg.population, 5, range(50))
    t_one, l_one = pop.sample(cfg.population, 5, [37])
    np.testing.assert_array_equal(t_all[37], t_one[0])
    np.testing.assert_array_equal(l_all[37], l_one[0])
    t_other, _ = pop.sample(cfg.population, 6, [37])
    assert not np.array_equal(t_other[0], t_one[0])


def test_paper_split_sizes():
    cfg = load(ROOT / "configs" / "paper.yaml")
    d = cfg.dataset
    assert d.n_test == 6396
    folds = pop.split(cfg.seed, d.n_images, d.n_test, d.n_folds)
    assert folds.dtype == np.int8 and folds.shape == (76396,)
    assert np.sum(folds == -1) == 6396
    assert [int(np.sum(folds == k)) for k in range(4)] == [17500] * 4


def test_n_images_override_keeps_proportions_and_split_depends_on_seed_and_n_only():
    from lenshpc.simulate.plan import with_n_images
    cfg = with_n_images(load(ROOT / "configs" / "paper.yaml"), 7640)
    assert cfg.dataset.n_images == 7640 and cfg.dataset.n_test == 640
    a = pop.split(cfg.seed, 7640, 640, 4)
    np.testing.assert_array_equal(a, pop.split(cfg.seed, 7640, 640, 4))
    assert [int(np.sum(a == k)) for k in range(4)] == [1750] * 4
    assert not np.array_equal(a, pop.split(cfg.seed + 1, 7640, 640, 4))


def test_ordered_split_is_the_studys():
    """The first n_images - n_test items in row order are the cross-validation set, item i
    in fold i % n_folds (tf.data's shard(n_folds, k)); the last n_test are the test set."""
    folds = pop.split(1, 76396, 6396, 4, "ordered")
    assert folds.dtype == np.int8 and folds.shape == (76396,)
    assert np.all(folds[70000:] == -1) and np.all(folds[:70000] >= 0)
    np.testing.assert_array_equal(folds[:70000], np.arange(70000) % 4)
    assert [int(np.sum(folds == k)) for k in range(4)] == [17500] * 4
    # independent of the seed; uneven folds differ by one at most
    np.testing.assert_array_equal(folds, pop.split(2, 76396, 6396, 4, "ordered"))
    np.testing.assert_array_equal(pop.split(0, 10, 3, 3, "ordered"), [0, 1, 2, 0, 1, 2, 0, -1, -1, -1])
    np.testing.assert_array_equal(pop.split(0, 4, 0, 2, "ordered"), [0, 1, 0, 1])


def test_split_scheme_is_a_config_key_random_by_default():
    assert loads(None).dataset.split == "random"
    assert loads({"dataset": {"split": "ordered"}}).dataset.split == "ordered"
    with pytest.raises(UserError, match="config dataset.split: 'sorted' is not allowed"):
        loads({"dataset": {"split": "sorted"}})
    np.testing.assert_array_equal(pop.split(5, 100, 10, 4), pop.split(5, 100, 10, 4, "random"))


def test_more_folds_than_items_is_refused():
    from lenshpc.simulate.plan import with_n_images
    with pytest.raises(UserError, match="n_folds"):
        with_n_images(load(ROOT / "configs" / "debug.yaml"), 1)


# --------------------------------------------------------------------------- catalogue


def _catalogue_values(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"lens_mass.theta_E": rng.uniform(0.5, 1.5, n), "lens_mass.q": rng.uniform(0.5, 1, n),
            "lens_mass.phi": rng.uniform(0, 180, n), "source_light.center_x": rng.uniform(-.1, .1, n)}


def test_catalogue_csv_and_hdf5_replace_the_population(tmp_path):
    cfg = loads(None)
    values = _catalogue_values(30)
    csv = tmp_path / "cat.csv"
    names = list(values)
    rows = np.column_stack([values[k] for k in names])
    np.savetxt(csv, rows, delimiter=",", header=",".join(names), comments="", fmt="%.17g")
    h5 = tmp_path / "cat.h5"
    with h5py.File(h5, "w") as f:
        table = np.zeros(30, dtype=[(k, "f8") for k in names])
        for k in names:
            table[k] = values[k]
        f["systems"] = table
    for path in (csv, h5):
        cat = read_catalogue(path, cfg.population, 20)
        assert set(cat) == set(names) and all(len(v) == 20 for v in cat.values())
        truth, labels = pop.sample(cfg.population, 1, range(20), cat)
        np.testing.assert_allclose(labels[:, 0], values["lens_mass.theta_E"][:20], rtol=1e-6)
        np.testing.assert_allclose(labels[:, 1], values["lens_mass.q"][:20], rtol=1e-6)
        i = list(TRUTH_NAMES).index("source_light.center_x")
        np.testing.assert_allclose(truth[:, i], values["source_light.center_x"][:20])
        # a parameter the catalogue lacks still comes from its distribution
        j = list(TRUTH_NAMES).index("source_light.amp")
        assert len(np.unique(truth[:, j])) == 20


def test_bad_catalogues_are_refused(tmp_path):
    cfg = loads(None)
    bad = tmp_path / "bad.csv"
    bad.write_text("lens_mass.theta_E,lens_mass.colour\n1,2\n")
    with pytest.raises(UserError, match="unknown column 'lens_mass.colour'"):
        read_catalogue(bad, cfg.population, 1)
    short = tmp_path / "short.csv"
    short.write_text("lens_mass.theta_E\n1\n2\n")
    with pytest.raises(UserError, match="2 rows"):
        read_catalogue(short, cfg.population, 5)
    with pytest.raises(UserError, match="not found"):
        read_catalogue(tmp_path / "none.csv", cfg.population, 5)
    badq = tmp_path / "q.csv"
    badq.write_text("lens_mass.q\n1.5\n")
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        read_catalogue(badq, cfg.population, 1)
