"Tuning on the shared real BTC bars: a smoke run, the leakage guard, reproducibility, objectives, and a study that survives SIGKILL."
import time
from collections import Counter

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from cryptoml.core import ConfigError, LeakageError
from cryptoml.features import features_asof
from cryptoml.metrics import METRICS
from cryptoml.tune import FINISHED, finished_trials, pick_trial, tune
from tune_worker import result_of, seed_table, start_worker

@pytest.fixture(scope="module")
def btc(bars_csv, tmp_path_factory):
    "The shared 1-minute BTC/USDT bars as a labelled seed feature table, with the bars and metadata."
    return seed_table(tmp_path_factory.mktemp("home"))

def quick(table, **kw):
    "A short tune: 7 validation days, few resamples, no progress bar."
    return tune(table, **{"n_trials": 6, "val_days": 7, "progress": False, "n_boot": 100, **kw})

def test_a_few_trials_on_real_bars_give_probabilities_metrics_and_a_verdict(btc):
    table, bars, meta = btc
    result = quick(table, feature_fn=features_asof(bars, "seed", timeframe="1m"), table_meta=meta, n_boot=200)
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

def test_a_leak_stops_the_run_before_any_trial(btc, tmp_path):
    table, _, meta = btc
    storage = f"sqlite:///{tmp_path/'optuna.db'}"
    leaky = table.assign(peek=table.fwd_ret.fillna(0))  # the next bar's return, smuggled in as a feature
    with pytest.raises(LeakageError, match="'peek'"): quick(leaky, storage=storage, table_meta=meta)
    assert optuna.get_all_study_names(storage) == []

def test_same_data_seed_and_trial_count_give_the_same_model(btc, tmp_path):
    table, _, _ = btc
    first, stored = quick(table, n_trials=8), quick(table, n_trials=8, storage=f"sqlite:///{tmp_path/'optuna.db'}")
    assert stored.params == first.params and stored.best_iteration == first.best_iteration
    assert stored.metrics == first.metrics and stored.baselines == first.baselines
    val = first.split.val[first.features]
    assert (stored.booster.predict(val) == first.booster.predict(val)).all()
    assert quick(table, n_trials=8, seed=1).params != first.params

def test_accuracy_and_multi_objective_studies_each_pick_one_model(btc):
    table, _, _ = btc
    accuracy = quick(table, objective="accuracy")
    assert accuracy.study.directions == [optuna.study.StudyDirection.MINIMIZE]  # the error rate, as LightGBM's binary_error
    assert accuracy.study.best_value == min(t.value for t in accuracy.study.trials if t.state == TrialState.COMPLETE)
    multi = quick(table, objective="multi")
    front = multi.study.best_trials
    assert multi.best_trial in [t.number for t in front]
    assert multi.best_trial == max(front, key=lambda t: (t.values[0] - t.values[1], -t.number)).number
    assert pick_trial(multi.study).number == multi.best_trial

def test_a_named_study_refuses_trials_from_other_data(btc, tmp_path):
    table, _, _ = btc
    storage = f"sqlite:///{tmp_path/'optuna.db'}"
    quick(table, n_trials=2, storage=storage, study_name="shared")
    with pytest.raises(ConfigError, match="'shared' holds trials made on other data"):
        quick(table.iloc[:-60], n_trials=2, storage=storage, study_name="shared")

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
