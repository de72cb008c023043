"""Tuning on the shared real BTC bars: a smoke run, the leakage guard (on by default, and the weak leak it used to miss),
the plausibility alarm, reproducibility (on a snapshot, in another process), objectives, and a study that survives SIGKILL."""
import json, subprocess, sys, time
from collections import Counter

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from cryptoml.core import ConfigError, LeakageError, sha256_file
from cryptoml.features import build_features, features_asof, read_feature_table, snapshot_table
from cryptoml.ingest import example_market
from cryptoml.metrics import METRICS
from cryptoml.tune import FINISHED, finished_trials, pick_trial, tune
from tune_worker import result_of, seed_table, start_worker

@pytest.fixture(scope="module")
def btc(bars_csv, tmp_path_factory):
    "The shared 1-minute BTC/USDT bars as a labelled seed feature table (metadata in attrs), the bars, and their data root."
    home = tmp_path_factory.mktemp("home")
    table, bars, _ = seed_table(home)
    return table, bars, home

@pytest.fixture(scope="module")
def stored(bars_csv, funding_csv, tmp_path_factory):
    "A data root holding the shared BTC/USDT bars and funding, and the path of their seed feature table built by the store."
    home = tmp_path_factory.mktemp("stored")
    return build_features(example_market(home), home=home, progress=False), home

def quick(table, home, **kw):
    "A short tune: 7 validation days, few resamples, no progress bar; the guard recomputes features from the bars in `home`."
    return tune(table, **{"home": home, "n_trials": 6, "val_days": 7, "progress": False, "n_boot": 100, **kw})

def weak_leak(table, seed=0):
    "The next bar's return buried in noise 2.5 times its spread: alone, a ROC AUC of about 0.63 (the issue's weak leak)."
    noise = np.random.default_rng(seed).standard_normal(len(table))
    return (table.fwd_ret.fillna(0) + 2.5 * table.fwd_ret.std() * noise).to_numpy()

def test_a_few_trials_on_real_bars_give_probabilities_metrics_and_a_verdict(btc):
    table, bars, home = btc
    result = quick(table, home, feature_fn=features_asof(bars, "seed", timeframe="1m"), n_boot=200)
    val = result.split.val
    p = result.booster.predict(val[result.features])
    assert len(p) == len(val) and ((p >= 0) & (p <= 1)).all()
    assert result.n_trials == 6 and result.booster.num_trees() == result.best_iteration
    for name, scores in {"lgbm": result.metrics, **result.baselines}.items():
        assert set(scores["ci95"]) == set(METRICS), name
        lo, hi = scores["ci95"]["accuracy"]
        assert lo <= scores["accuracy"] <= hi, name
    # the baselines score the same rows: reversal is "down after an up bar", counted here by hand
    assert result.baselines["reversal"]["accuracy"] == pytest.approx(np.mean((val.ret1 < 0) == (val.y == 1)))
    assert result.guard.checks["point in time"] == "passed"
    assert result.study_name.startswith("BTCUSDT_1m-seed-logloss-s0-")
    assert "Reversal beats momentum" in result.verdict  # the known fact on 1-minute BTC
    assert result.guard_ran and result.implausible == [] and result.manifest["guard"] == "the caller's feature_fn"

def test_a_leak_stops_the_run_before_any_trial(btc, tmp_path):
    table, _, home = btc
    storage = f"sqlite:///{tmp_path/'optuna.db'}"
    leaky = table.assign(peek=table.fwd_ret.fillna(0))  # the next bar's return, smuggled in as a feature
    with pytest.raises(LeakageError, match="'peek'"): quick(leaky, home, storage=storage)
    assert optuna.get_all_study_names(storage) == []

def test_tune_with_no_guard_argument_catches_the_weak_planted_leak(stored):
    "The issue's finding: a column with AUC 0.63 alone passed the single-feature bound, and tune() skipped the recompute."
    path, home = stored
    table, _ = read_feature_table(path)
    leaky = table.assign(peek=weak_leak(table))
    with pytest.raises(LeakageError) as caught: tune(leaky, home=home, n_trials=4, val_days=7, progress=False)
    report = caught.value.report
    auc = report.feature_auc.auc["peek"]
    print(f"\nweak leak: ROC AUC alone {auc:.3f}; the guard says: {report.problems}")
    assert 0.6 < auc < 0.65 and report.checks["single-feature AUC"] == "passed"  # inside the bound: only the recompute catches it
    assert report.checks["point in time"] == "failed"
    assert report.problems == [p for p in report.problems if "feature_fn does not compute 'peek' (ROC AUC alone: 'peek' 0.6" in p]

def test_the_weak_leak_written_into_a_registered_column_is_caught_in_validation_rows(stored):
    "Hidden in an honest column over the last three days (after every cut spread over the table), the last bar's cut finds it."
    path, home = stored
    table, _ = read_feature_table(path)
    late = (table.ts >= table.ts.iloc[-1] - pd.Timedelta("3D")).to_numpy()
    hidden = table.assign(vol_z=np.where(late, weak_leak(table), table.vol_z))
    with pytest.raises(LeakageError, match="feature 'vol_z' is not point-in-time") as caught:
        tune(hidden, home=home, n_trials=4, val_days=7, progress=False)
    assert caught.value.report.cuts[-1] == table.ts.iloc[-1] + pd.Timedelta("1min")

def test_opting_out_is_explicit_and_recorded_and_the_implausible_score_is_flagged(stored):
    path, home = stored
    table, meta = read_feature_table(path)
    leaky = table.assign(peek=weak_leak(table))
    with pytest.warns(UserWarning, match="suspected leak"):
        blind = tune(leaky, guard=False, n_trials=12, val_days=7, n_boot=200, progress=False)
    m = blind.metrics
    print(f"\nweak leak, guard=False: accuracy {m['accuracy']:.4f}, ROC AUC {m['roc_auc']:.4f} on {len(blind.split.val):,} rows; "
          f"flagged: {blind.implausible}")
    assert not blind.guard_ran and blind.guard.checks["point in time"] == "skipped" and blind.manifest["guard"] == "off (guard=False)"
    assert blind.implausible and all("suspected leak" in f and "the bound is" in f for f in blind.implausible)
    assert any(f.startswith("validation accuracy") for f in blind.implausible)
    assert blind.verdict.startswith("SUSPECTED LEAK: validation") and "SUSPECTED LEAK" in repr(blind)

def test_a_table_that_names_no_market_is_refused_unless_the_caller_opts_out(btc):
    table, _, home = btc
    bare = table.copy()
    bare.attrs = {}
    with pytest.raises(ConfigError, match="metadata names no exchange, symbol, timeframe"): quick(bare, home)
    with pytest.raises(ConfigError, match="feature_fn is given but guard=False"): quick(bare, home, guard=False, feature_fn=print)
    assert not quick(bare, home, guard=False, n_trials=2).guard_ran

def test_rerunning_tune_on_a_snapshot_reproduces_the_metrics_exactly_in_another_process(stored):
    path, home = stored
    snap = snapshot_table(path, home)
    first = tune(read_feature_table(snap)[0], home=home, n_trials=6, val_days=7, n_boot=100, progress=False)
    build_features(example_market(home), home=home, dead_zone=0.5, progress=False)  # the market's table changes meanwhile
    code = (f"import json; from cryptoml.features import read_feature_table; from cryptoml.tune import tune; "
            f"r = tune(read_feature_table({str(snap)!r})[0], home={str(home)!r}, n_trials=6, val_days=7, n_boot=100, progress=False); "
            f"print(json.dumps([r.metrics, r.baselines, r.params, r.manifest]))")
    metrics, baselines, params, manifest = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                                     check=True).stdout.splitlines()[-1])
    assert sha256_file(snap) == snap.stem and sha256_file(path) != snap.stem
    assert [metrics, baselines, params] == json.loads(json.dumps([first.metrics, first.baselines, first.params]))
    assert manifest == json.loads(json.dumps(first.manifest))
    assert manifest["bars"]["rows"] == 30_240 and manifest["seeds"] == {"sampler": 0, "lightgbm": 0, "bootstrap": 0}
    assert manifest["feature_code"]["code_sha256"] == read_feature_table(snap)[1]["code_sha256"]

def test_same_data_seed_and_trial_count_give_the_same_model(btc, tmp_path):
    table, _, home = btc
    first, stored = quick(table, home, n_trials=8), quick(table, home, n_trials=8, storage=f"sqlite:///{tmp_path/'optuna.db'}")
    assert stored.params == first.params and stored.best_iteration == first.best_iteration
    assert stored.metrics == first.metrics and stored.baselines == first.baselines
    val = first.split.val[first.features]
    assert (stored.booster.predict(val) == first.booster.predict(val)).all()
    assert quick(table, home, n_trials=8, seed=1).params != first.params

def test_accuracy_and_multi_objective_studies_each_pick_one_model(btc):
    table, _, home = btc
    accuracy = quick(table, home, objective="accuracy")
    assert accuracy.study.directions == [optuna.study.StudyDirection.MINIMIZE]  # the error rate, as LightGBM's binary_error
    assert accuracy.study.best_value == min(t.value for t in accuracy.study.trials if t.state == TrialState.COMPLETE)
    multi = quick(table, home, objective="multi")
    front = multi.study.best_trials
    assert multi.best_trial in [t.number for t in front]
    assert multi.best_trial == max(front, key=lambda t: (t.values[0] - t.values[1], -t.number)).number
    assert pick_trial(multi.study).number == multi.best_trial

def test_a_named_study_refuses_trials_from_other_data(btc, tmp_path):
    table, _, home = btc
    storage = f"sqlite:///{tmp_path/'optuna.db'}"
    quick(table, home, n_trials=2, storage=storage, study_name="shared")
    with pytest.raises(ConfigError, match="'shared' holds trials made on other data"):
        quick(table.iloc[:-60], home, n_trials=2, storage=storage, study_name="shared")

def wait_for(condition, timeout=120.0):
    "Poll `condition` until it returns a truthy value."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition(): return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s")

def midway(storage, name, at_least):
    "The study once it holds `at_least` finished trials and one running; None before."
    try: study = optuna.load_study(study_name=name, storage=storage)
    except KeyError: return None
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    return study if sum(states[s] for s in FINISHED) >= at_least and states[TrialState.RUNNING] else None

def test_a_study_killed_with_sigkill_resumes_to_exactly_the_requested_trials(btc, tmp_path):
    table_file, storage, n = tmp_path/"table.parquet", f"sqlite:///{tmp_path/'optuna.db'}", 20
    btc[0].to_parquet(table_file)
    worker = start_worker(table_file, storage, "resume", n)
    wait_for(lambda: midway(storage, "resume", 5))
    worker.kill()
    assert worker.wait() == -9
    before = finished_trials(optuna.load_study(study_name="resume", storage=storage))
    assert 5 <= before < n
    assert result_of(start_worker(table_file, storage, "resume", n))["n_trials"] == n
    study = optuna.load_study(study_name="resume", storage=storage)
    states = Counter(t.state for t in study.trials)
    assert finished_trials(study) == n
    assert states[TrialState.RUNNING] <= 1 and states[TrialState.FAIL] == 0  # at most the trial SIGKILL interrupted
    assert len(study.trials) == n + states[TrialState.RUNNING]  # the restart added only the missing trials
