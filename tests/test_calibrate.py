"""Calibrators as the serving path will meet them: fitted by scikit-learn, stored as JSON, loaded and applied with numpy
only; an online recalibrator that cannot learn a label before its bar's label time; and a label-free accuracy estimate
that holds only for calibrated forecasts.
"""
import json, math, subprocess, sys

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from cryptoml.core import ArtifactError, LeakageError
from cryptoml.calibrate import (EPS, MIN_ROWS, OnlineCalibrator, calibration_report, ece_noise, equal_count_bins,
                                expected_accuracy, fit_calibrator, fit_isotonic, fit_platt, load_calibrator, log_odds, replay)
from cryptoml.features import add_labels, compute_features, stationary
from cryptoml.ingest import synthetic_market
from cryptoml.split import feature_columns, time_split
from cryptoml.tune import base_params

def labelled_forecasts(seed: int, rows: int, slope: float, shift: float, spread: float = 0.3):
    "Forecasts around 0.5 and labels drawn from σ(slope·logit(p) + shift): miscalibrated unless slope 1 and shift 0."
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(0, spread, rows)))
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-(slope * log_odds(p) + shift)))).astype(float)
    return p, y

def through_json(calibrator):
    "The calibrator as the registry will store and serve it: dumped to JSON text and loaded back."
    return load_calibrator(json.loads(json.dumps(calibrator.to_json())))

QUERY = np.sort(np.r_[1e-300, 1e-9, np.linspace(0, 1, 2001), 1 - 1e-9])
def forecast_sets(min_rows: int = 150):
    "Seed, rows, slope, shift and spread of `labelled_forecasts`."
    return st.tuples(st.integers(0, 10_000), st.integers(min_rows, 3000), st.floats(0.0, 3.0), st.floats(-1.0, 1.0),
                     st.floats(0.01, 3.0))

@settings(max_examples=40, deadline=None)
@given(forecast_sets())
def test_a_stored_calibrator_gives_sklearns_own_predictions(case):
    seed, rows, slope, shift, spread = case
    p, y = labelled_forecasts(seed, rows, slope, shift, spread)
    if y.min() == y.max(): return
    bins = equal_count_bins(p, y, len(p) // MIN_ROWS)  # isotonic regression runs on bins of about MIN_ROWS forecasts
    assert bins[2].sum() == rows and (len(bins[0]) == 1 or np.diff(bins[0]).min() > 0)
    isotonic = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip").fit(*bins[:2], sample_weight=bins[2])
    logistic = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=1000)
    logistic.fit(log_odds(p)[:, None], y)
    platt = through_json(fit_platt(p, y))
    expected = {"isotonic": isotonic.predict(QUERY),
                "platt": np.clip(logistic.predict_proba(log_odds(QUERY)[:, None])[:, 1], EPS, 1 - EPS)}
    if logistic.coef_[0, 0] < 0: expected["platt"] = np.full(len(QUERY), y.mean())  # held non-decreasing: the base rate
    for calibrator in (through_json(fit_isotonic(p, y)), platt):
        np.testing.assert_allclose(calibrator.apply(QUERY), expected[calibrator.kind], rtol=0, atol=1e-12)
        np.testing.assert_allclose([calibrator.apply(float(q)) for q in QUERY], expected[calibrator.kind], rtol=0, atol=1e-12)

@settings(max_examples=40, deadline=None)
@given(forecast_sets(min_rows=600), st.booleans())  # fit_calibrator's 5 parts need 101 rows each
def test_every_calibrator_is_monotone_and_strictly_inside_0_1(case, extreme):
    seed, rows, slope, shift, spread = case
    p, y = labelled_forecasts(seed, rows, slope, shift, 8.0 if extreme else spread)  # extreme: forecasts near 0 and 1
    if y.min() == y.max(): return
    for calibrator in (fit_calibrator(p, y), fit_platt(p, y), fit_isotonic(p, y)):
        for out in (calibrator.apply(QUERY), np.array([calibrator.apply(float(q)) for q in QUERY])):
            assert (np.diff(out) >= 0).all(), calibrator
            assert out.min() >= EPS * (1 - 1e-12) and out.max() <= (1 - EPS) * (1 + 1e-12), calibrator  # inside (0, 1)

def test_serving_loads_and_applies_a_calibrator_without_sklearn_scipy_or_plotly(tmp_path):
    p, y = labelled_forecasts(0, 2000, 0.6, 0.1)
    for calibrator in (fit_platt(p, y), fit_isotonic(p, y)):
        path = tmp_path/f"{calibrator.kind}.json"
        path.write_text(json.dumps(calibrator.to_json()))
        script = (f"import sys\nfrom cryptoml.calibrate import load_calibrator\nc = load_calibrator({str(path)!r})\n"
                  "print(c.apply(0.52), list(c.apply([0.48, 0.52])))\n"
                  "print(sorted(m for m in ('sklearn', 'scipy', 'plotly', 'lightgbm') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
        assert float(out[0].split()[0]) == calibrator.apply(0.52)
        assert out[1] == "[]", f"loading a calibrator imported {out[1]}"

@pytest.mark.parametrize("damage, says", [
    (lambda text: text[:len(text) // 2], "cannot read calibrator"),
    (lambda text: text.replace('"isotonic"', '"beta"'), "unknown kind 'beta'"),
    (lambda text: text.replace('"schema": 1', '"schema": 7'), "schema 7"),
    (lambda text: json.dumps({**json.loads(text), "y": json.loads(text)["y"][::-1]}), "must not decrease"),
    (lambda text: json.dumps({**json.loads(text), "x": [math.nan] + json.loads(text)["x"][1:]}), "isotonic x[0]"),
])
def test_a_damaged_calibrator_file_is_refused_by_name(tmp_path, damage, says):
    p, y = labelled_forecasts(1, 3000, 0.6, 0.1)
    path = tmp_path/"calibrator.json"
    path.write_text(damage(json.dumps(fit_isotonic(p, y).to_json())))
    with pytest.raises(ArtifactError, match="calibrator") as refused: load_calibrator(path)
    assert says in str(refused.value) and str(path) in str(refused.value)

@pytest.mark.parametrize("timeframe, horizon", [("1m", 1), ("2h", 3)])
def test_a_label_is_refused_until_its_bar_and_horizon_have_closed(timeframe, horizon):
    bar = pd.Timedelta(timeframe.replace("m", "min"))
    start = pd.Timestamp("2023-03-01", tz="UTC")
    online = OnlineCalibrator(timeframe, horizon=horizon)
    for i in range(horizon): online.predict(start + i * bar, 0.5)  # the stream is now at the close of bar horizon - 1
    with pytest.raises(LeakageError, match="is known at"): online.observe(start, 1)
    online.advance(start + (horizon + 1) * bar - pd.Timedelta("1ms"))
    with pytest.raises(LeakageError): online.observe(start, 1)
    online.advance(start + (horizon + 1) * bar)
    online.observe(start, 1)
    with pytest.raises(LeakageError, match="from its future"): online.predict(start - bar, 0.5)

def test_a_live_online_calibrator_follows_its_clock():
    now = [pd.Timestamp("2023-03-01 00:05", tz="UTC").value // 1_000_000]
    online = OnlineCalibrator("1m", clock=lambda: now[0])
    online.predict(pd.Timestamp("2023-03-01 00:04", tz="UTC"), 0.55)  # closed at 00:05
    with pytest.raises(LeakageError, match="not known yet"): online.predict(pd.Timestamp("2023-03-01 00:05", tz="UTC"), 0.5)
    with pytest.raises(LeakageError): online.observe(pd.Timestamp("2023-03-01 00:04", tz="UTC"), 1)
    now[0] += 60_000
    online.observe(pd.Timestamp("2023-03-01 00:04", tz="UTC"), 1)
    assert online.labels == 1

@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(50, 400), st.sampled_from(["running", "rolling"]), st.integers(1, 3), st.data())
def test_no_online_forecast_depends_on_a_label_not_yet_known(seed, rows, learner, horizon, data):
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2023-03-01", tz="UTC") + pd.to_timedelta(np.cumsum(rng.integers(1, 4, rows)), unit="min")  # with gaps
    p, y = labelled_forecasts(seed, rows, 1.5, 0.3)
    y[rng.uniform(size=rows) < 0.05] = np.nan  # some bars never get a label
    k = data.draw(st.integers(0, rows - 2))
    changed = y.copy()
    changed[k:] = np.where(np.isnan(y[k:]), np.nan, 1 - y[k:])
    settings_ = {"refit_every": 1, "intercept_prior": 5} if learner == "rolling" else {"half_life": 50, "intercept_prior": 5}
    first, second = (replay(OnlineCalibrator("1m", learner=learner, horizon=horizon, **settings_), ts, p, labels)
                     for labels in (y, changed))
    known_by = ts + (horizon + 1) * pd.Timedelta("1min")  # when each bar's label is known
    unaffected = (ts + pd.Timedelta("1min")) < known_by[k]  # bars that closed before the first changed label was known
    np.testing.assert_array_equal(first[unaffected], second[unaffected])

def test_online_recalibration_follows_a_shift_the_static_calibrator_missed():
    start, rows = pd.Timestamp("2023-03-01", tz="UTC"), 20_000
    p, y_before = labelled_forecasts(3, rows, 1.0, 0.0)
    y_after = (np.random.default_rng(5).uniform(size=rows) < 1 / (1 + np.exp(-(log_odds(p) + 0.25)))).astype(float)
    p_stream, y = np.r_[p, p], np.r_[y_before, y_after]  # half way, the base rate moves up by about 6 points
    ts = start + pd.to_timedelta(np.arange(2 * rows), unit="min")
    static = fit_calibrator(p_stream[:rows], y[:rows])
    online = replay(OnlineCalibrator("1m", base=static), ts, p_stream, y)
    later = slice(rows + 2000, None)  # a day and a half after the shift
    report = calibration_report(y[later], {"static": static.apply(p_stream[later]), "online": online[later]}, n_boot=300)
    assert report["change"]["online"]["log_loss"]["ci95"][1] < 0  # significantly better
    assert report["metrics"]["online"]["ece"] < 0.01 < report["metrics"]["static"]["ece"]

def test_expected_accuracy_tracks_the_realised_one_only_when_forecasts_are_calibrated():
    rng, tracked, missed = np.random.default_rng(7), [], []
    for scale in np.linspace(0.05, 1.5, 25):
        p = 1 / (1 + np.exp(-scale * rng.standard_normal(3000)))
        y = rng.uniform(size=p.size) < p
        for forecasts, out in ((p, tracked), (1 / (1 + np.exp(-3 * log_odds(p))), missed)):
            est = expected_accuracy(forecasts)
            realised = np.mean((forecasts > 0.5) == y)
            out.append((est["expected_accuracy"], realised, est["ci95"][0] <= realised <= est["ci95"][1]))
    tracked, missed = np.array(tracked), np.array(missed)
    assert tracked[:, 2].mean() >= 0.85 and np.abs(tracked[:, 0] - tracked[:, 1]).max() < 0.035
    assert np.corrcoef(tracked[:, 0], tracked[:, 1])[0, 1] > 0.95
    assert missed[:, 2].mean() < 0.2 and (missed[:, 0] - missed[:, 1]).mean() > 0.05

def test_an_overconfident_booster_is_calibrated_on_later_bars_without_losing_log_loss():
    bars = synthetic_market(days=20, seed=2)
    table = add_labels(compute_features(bars, "seed"), bars)
    outer = time_split(table, 8)  # the booster trains on 12 days; calibration on the next 4, the last 4 held back
    windows = time_split(outer.val, 4)
    # stationary features only: what a booster learns from the price level is a bias that follows the price path,
    # which no map from forecast to outcome removes (the synthetic market in nbs/08_calibrate.ipynb)
    features = [f for f in feature_columns(table) if stationary(f)]
    booster = lgb.train({**base_params(), "num_leaves": 63, "learning_rate": 0.05, "min_child_samples": 20},
                        lgb.Dataset(outer.train[features], outer.train.y), 200)
    stream = pd.concat([windows.train, windows.val])
    later = np.r_[np.zeros(len(windows.train), bool), np.ones(len(windows.val), bool)]
    p = booster.predict(stream[features], num_threads=1)
    calibrator = through_json(fit_calibrator(p[~later], windows.train.y, ts=windows.train.ts))
    online = replay(OnlineCalibrator("1m", base=calibrator), stream.ts, p, stream.y)[later]
    report = calibration_report(windows.val.y, {"raw": p[later], "static": calibrator.apply(p[later]), "online": online},
                                n_boot=300)
    ece, change = {name: m["ece"] for name, m in report["metrics"].items()}, report["change"]
    assert calibrator.kind in ("platt", "isotonic") and ece["raw"] > 0.03
    # significantly better, and ECE at least halved (on seeds 0-9 of this market: all but seed 3, 0.038 to 0.023)
    assert ece["static"] < ece["raw"] / 2 and change["static"]["log_loss"]["ci95"][1] < 0
    # how overconfident the booster is moves from day to day: online recalibration over the static map follows it,
    # to within the ECE that perfectly calibrated forecasts show on four days of bars (ece_noise's 95th percentile)
    assert ece["online"] <= ece_noise(online)["p95"] and change["online"]["log_loss"]["ci95"][1] < 0
