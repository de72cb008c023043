"""Tuning on the shared real BTC bars: a smoke run, the leakage guard (on by default, and the weak leak it used to miss),
the plausibility alarm, reproducibility (on a snapshot, in another process, two trials at a time), objectives, a study file
that survives SIGKILL, and bad settings refused from the command line."""
import itertools, json, subprocess, sys, time

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from cryptoml.core import ConfigError, LeakageError, sha256_file
from cryptoml.features import build_features, features_asof, read_feature_table, snapshot_table
from cryptoml.ingest import example_market
from cryptoml.metrics import METRICS
from cryptoml.cli import main
from cryptoml.tune import FINISHED, pick_trial, tune
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

def trials_of(study) -> list[tuple]:
    "What a study's trials drew, scored and became, in number order."
    return [(t.number, t.state, t.params, t.values, t.intermediate_values) for t in study.trials]

def test_two_trials_at_a_time_give_the_same_study_and_model_every_time(btc):
    table, _, home = btc
    first, again = (quick(table, home, n_trials=16, n_jobs=2, guard=False) for _ in range(2))
    assert trials_of(first.study) == trials_of(again.study) and len(first.study.trials) == 16
    assert (first.params, first.metrics, first.baselines) == (again.params, again.metrics, again.baselines)
    spans = [(t.datetime_start, t.datetime_complete) for t in first.study.trials]
    overlapping = sum(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans, 2))
    print(f"\n16 trials, 2 at a time: {overlapping} pairs of trials overlapped in time; best trial {first.best_trial}")
    assert overlapping >= 8  # they did run side by side, finishing in whatever order
    assert first.sampler == "TrialSeededTPE(seed=0, window=4)" and first.n_jobs == 2  # window_width(2)
    assert first.manifest["search"]["sampler"] == first.sampler and "TrialWindow(4)" in first.manifest["search"]["pruner"]
    assert "n_startup_trials=2" in first.manifest["search"]["pruner"]  # trial 5 is the first it may prune, as Optuna's
    one = quick(table, home, n_trials=16, n_jobs=1, guard=False)  # one at a time, each trial sees every one before it
    assert trials_of(one.study) != trials_of(first.study) and one.sampler == "TrialSeededTPE(seed=0, window=1)"
    assert [t.params for t in one.study.trials][:5] == [t.params for t in first.study.trials][:5]  # random start-up draws

def wait_for(condition, timeout=120.0):
    "Poll `condition` until it returns a truthy value."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition(): return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s")

def kept_trials(storage, name, at_least):
    "The study file's trials once it holds `at_least`; None before."
    try: trials = optuna.load_study(study_name=name, storage=storage).trials
    except KeyError: return None
    return trials if len(trials) >= at_least else None

def test_a_run_killed_with_sigkill_resumes_to_the_study_an_uninterrupted_run_makes(btc, tmp_path):
    table_file, storage, n = tmp_path/"table.parquet", f"sqlite:///{tmp_path/'optuna.db'}", 20
    btc[0].to_parquet(table_file)
    worker = start_worker(table_file, storage, "resume", n, n_jobs=2)
    wait_for(lambda: kept_trials(storage, "resume", 5))
    worker.kill()
    assert worker.wait() == -9
    kept = optuna.load_study(study_name="resume", storage=storage).trials
    assert 5 <= len(kept) < n and [t.number for t in kept] == list(range(len(kept)))  # finished trials 0..k, in order
    assert all(t.state in FINISHED for t in kept)  # and nothing left running
    resumed = result_of(start_worker(table_file, storage, "resume", n, n_jobs=2))
    study = optuna.load_study(study_name="resume", storage=storage)
    assert resumed["n_trials"] == n == len(study.trials) and all(t.state in FINISHED for t in study.trials)
    whole = tune(btc[0], n_trials=n, val_days=7, progress=False, n_boot=100, guard=False, n_jobs=2)  # never interrupted
    print(f"\nkilled after {len(kept)} of {n} trials were kept; the resumed study equals an uninterrupted one")
    assert [(t.params, t.values, t.state) for t in study.trials] == [(t.params, t.values, t.state) for t in whole.study.trials]
    assert resumed["params"] == json.loads(json.dumps(whole.params)) and resumed["best_trial"] == whole.best_trial

def test_bad_jobs_and_an_unreachable_storage_exit_2_naming_them(tmp_path, capsys):
    market = ["--exchange", "synthetic", "--symbol", "SYNTH/USDT", "--timeframe", "1m", "--home", str(tmp_path), "--quiet"]
    assert main(["demo", "--days", "3", "--home", str(tmp_path), "--quiet"]) == 0
    assert main(["features", *market]) == 0
    capsys.readouterr()
    for args, reason in [(["--jobs", "0"], "n_jobs (--jobs, trials run at once) must be a whole number >= 1, not 0"),
                         (["--jobs", "-2"], "not -2"),
                         (["--storage", "postgresql://tuner:secret@127.0.0.1:1/optuna"],
                          "cannot open the study storage postgresql://tuner:***@127.0.0.1:1/optuna: connection")]:
        status = main(["tune", *market, "--trials", "2", "--val-days", "1", *args])
        out, err = capsys.readouterr()
        assert (status, out) == (2, "") and err.startswith("cryptoml tune: error: ") and reason in err, err
        assert len(err.strip().splitlines()) == 1 and "secret" not in err
    with pytest.raises(ConfigError, match="not 1.5"): tune(pd.DataFrame(), n_jobs=1.5)
