"""Drift monitoring of a real promoted model: stable windows stay quiet, a market that jumps raises an alert,
and a model or table that is not what the card says is refused rather than measured.

The model is trained once (a few trials on a few days of the embedded synthetic market), saved and promoted
through the real registry; each test copies that data root and changes what it needs.
"""
import json, shutil, threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import rankdata

from cryptoml.core import ArtifactError, DataError, atomic_write_parquet, feature_path, parquet_metadata
from cryptoml.ingest import SYNTHETIC, read_bars, synthetic_market, write_bars, write_demo_market
from cryptoml.features import build_features, read_feature_table
from cryptoml.tune import tune
from cryptoml.registry import promote, run_dir, save_run
from cryptoml.monitor import LEVELS, PSI_ALERT, latest_report, monitor, psi

DAYS, VAL_DAYS = 6, 2

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A data root holding the synthetic market, its feature table and one promoted run."
    home = tmp_path_factory.mktemp("trained")
    write_demo_market(home, days=DAYS, seed=1)
    path = build_features(SYNTHETIC, home=home, progress=False)
    table, meta = read_feature_table(path)
    run_id = save_run(tune(table, home=home, n_trials=3, val_days=VAL_DAYS, progress=False, table_meta=meta, n_boot=50), home=home,
                      table_path=path)
    assert promote(run_id, home=home, force=True, n_boot=50).promoted  # a quick model: forced in, the gate is not under test here
    return home, run_id

@pytest.fixture
def home(trained, tmp_path):
    "A private copy of the trained data root."
    copy = tmp_path/"home"
    shutil.copytree(trained[0], copy, symlinks=True)
    return copy

finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)

@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(5, 300), elements=finite), arrays(np.float64, st.integers(5, 300), elements=finite))
def test_psi_is_nonnegative_zero_on_itself_and_depends_only_on_ranks(ref, cur):
    assert psi(ref, ref) == 0
    value = psi(ref, cur)
    assert value >= 0
    ranks = rankdata(np.r_[ref, cur])  # the values replaced by their ranks in the pooled sample, ties kept
    assert psi(ranks[:len(ref)], ranks[len(ref):]) == value

def test_report_on_the_recent_week_is_written_under_the_run(home, trained):
    report = monitor(home=home, window_days=VAL_DAYS)
    assert report["run_id"] == trained[1] and report["status"] in LEVELS
    path = Path(report["path"])
    assert path.parent == run_dir(trained[1], home)/"monitor"
    on_disk = json.loads(path.read_text())
    assert on_disk == {k: v for k, v in report.items() if k != "path"}
    assert latest_report(home=home) == on_disk
    assert [f["feature"] for f in report["features"]] == ["close", "ret1", "sma20_gap", "sma50_gap", "vol_z"]
    table, _ = read_feature_table(feature_path(home, SYNTHETIC))
    assert report["current"]["end"] == str(table.ts.max())
    assert report["current"]["rows"] == VAL_DAYS * 1440
    assert 0 < report["calibration"]["rows"] <= VAL_DAYS * 1440
    assert report["status"] == max([f["level"] for f in report["features"]] + [report["predictions"]["level"], report["calibration"]["level"]], key=LEVELS.index)

def test_a_market_that_jumps_to_a_new_price_range_raises_an_alert(home):
    last = read_bars(home, *SYNTHETIC[:3]).ts.max()
    jump = synthetic_market(days=2, seed=9, start=last + pd.Timedelta(minutes=1))
    jump[["open", "high", "low", "close"]] *= 3  # a price range the training window never saw
    write_bars(jump, home, *SYNTHETIC[:3])
    build_features(SYNTHETIC, home=home, progress=False)
    report = monitor(home=home, window_days=2)
    close = next(f for f in report["features"] if f["feature"] == "close")
    assert close["level"] == "alert" and close["psi"] > PSI_ALERT and close["ks_stat"] > 0.9
    assert report["status"] == "alert"
    assert any(f.startswith("close: PSI") for f in report["findings"])
    assert report["current"]["start"] > str(last)

def test_a_table_missing_a_model_feature_is_refused_by_name(home):
    path = feature_path(home, SYNTHETIC)
    table, meta = read_feature_table(path)
    atomic_write_parquet(path, table.drop(columns=["vol_z"]), parquet_metadata(path))
    with pytest.raises(DataError, match="vol_z"): monitor(home=home)

def test_a_tampered_model_is_refused_before_it_is_loaded(home, trained):
    pkl = run_dir(trained[1], home)/"lgbm.pkl"
    pkl.write_bytes(pkl.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="lgbm.pkl"): monitor(home=home)
    assert latest_report(home=home) is None

def test_monitors_running_at_once_each_keep_their_report(home):
    reports, errors = [], []
    def run():
        try: reports.append(monitor(home=home, window_days=1))
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert not errors
    assert len({r["path"] for r in reports}) == 3
    assert all(json.loads(Path(r["path"]).read_text())["status"] == r["status"] for r in reports)
