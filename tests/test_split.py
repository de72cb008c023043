"""The leak-safe split and the leakage guard on the shared real market data.

The real 1-minute BTC/USDT bars and the perpetual's funding rates are imported into a fresh data root, the feature
store's honest features are computed from them, and the time split of that table must pass every check of the
guard. Then leaks of the kinds people actually write are planted one at a time, and each must be caught and named.
Purged k-fold folds, which train on both sides of a validation window in the middle of the data, are held to their
own rule: honest folds pass, and a fold without its embargo or purge is caught and named.
"""
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cryptoml.core import LeakageError
from cryptoml.features import FEATURE_SETS, add_labels, compute_features, features_asof
from cryptoml.ingest import example_market, funding_exchange, read_bars, read_funding
from cryptoml.split import LeakageGuard, Split, feature_columns, kfold_embargo, purged_kfold, time_split, walk_forward

GUARD_SECONDS = 10  # the guard runs before every tuning run; a few seconds at most, with room for a loaded CI machine


@pytest.fixture(scope="module")
def market(bars_csv, funding_csv, tmp_path_factory):
    "The shared real bars and funding rates, read back from a fresh data root."
    home = tmp_path_factory.mktemp("home")
    key = example_market(home)
    return read_bars(home, *key[:3]), read_funding(home, funding_exchange(key), key.symbol)


@pytest.fixture(scope="module")
def rich(market):
    "The rich feature table of the real market with next-bar labels, and its point-in-time recompute."
    bars, funding = market
    table = add_labels(compute_features(bars, "rich", funding=funding), bars)
    return table, features_asof(bars, "rich", funding=funding)


@pytest.fixture(scope="module", params=sorted(FEATURE_SETS))
def honest_set(request, market):
    "Each honest feature set of the feature store on the real market: its name, its table with next-bar labels, its recompute."
    bars, funding = market
    table = add_labels(compute_features(bars, request.param, funding=funding), bars)
    return request.param, table, features_asof(bars, request.param, funding=funding)


def known_at(bars: pd.DataFrame, cut: pd.Timestamp) -> pd.DataFrame:
    "The bars that had closed by `cut`."
    return bars[bars.ts + pd.Timedelta("1min") <= cut]


def failure(split, table, feature_fn=None) -> LeakageError:
    "The guard's error (its message lists every problem, `.report` has them one by one); the test fails if the guard passes."
    with pytest.raises(LeakageError) as caught: LeakageGuard().check(split, table, feature_fn)
    return caught.value


def test_time_split_no_leak(honest_set):
    "Every honest feature set of the feature store passes every check, quickly, on the default split and on folds."
    feature_set, table, feature_fn = honest_set
    split = time_split(table)
    started = time.perf_counter()
    report = LeakageGuard().check(split, table, feature_fn)
    wall = time.perf_counter() - started
    print(f"\nguard on {len(table):,} rows x {len(feature_columns(table))} {feature_set} features: {wall:.2f} s; "
          f"most telling feature {report.summary()['max_auc_feature']} AUC {report.summary()['max_auc']}")
    assert report.ok and set(report.checks.values()) == {"passed"}
    assert list(report.feature_auc.index) == list(FEATURE_SETS[feature_set].features)
    assert wall < GUARD_SECONDS
    assert split.summary()["val"][0] == "2023-03-08T00:00:00+00:00"
    for fold in walk_forward(table, n_folds=3, val_days=4):
        assert LeakageGuard().check(fold, table, feature_fn).ok


PLANTED = {
    "next bar's return": ("peek_ret", lambda b: b.close.pct_change().shift(-1)),
    "centred rolling mean": ("centred_sma_gap", lambda b: b.close.rolling(31, center=True).mean() / b.close - 1),
    "whole-sample z-score": ("volume_z_all", lambda b: (b.volume - b.volume.mean()) / b.volume.std()),
}


@pytest.mark.parametrize("leak", sorted(PLANTED))
def test_guard_catches_leaky_feature(market, rich, leak):
    "A feature that looks ahead, hidden among the honest rich features, is caught and named."
    bars, _ = market
    honest, honest_fn = rich
    name, make = PLANTED[leak]
    table = honest.assign(**{name: make(bars)})
    feature_fn = lambda cut: honest_fn(cut).assign(**{name: make(known_at(bars, cut)).to_numpy()})
    error = failure(time_split(table), table, feature_fn)
    assert f"feature {name!r} is not point-in-time" in str(error)
    assert all(repr(name) in problem for problem in error.report.problems), "only the planted feature is blamed"


def test_guard_catches_a_random_split(rich):
    "Rows dealt to training and validation at random (not by time) fail the time-order and label-window checks."
    table, feature_fn = rich
    labelled = table[table.y.notna()]
    val = labelled.sample(frac=0.3, random_state=1).sort_index()
    message = str(failure(Split(labelled.drop(val.index), val, horizon=1, purge=1), table, feature_fn))
    assert "training time is not strictly before validation time" in message
    assert "training labels cross into validation" in message


def test_guard_catches_purge_zero_with_multi_bar_label(market, rich):
    "A 15-bar label with no purge: the last 15 training labels are made of validation prices."
    bars, _ = market
    table = add_labels(rich[0].drop(columns=["y", "fwd_ret"]), bars, horizon=15)
    message = str(failure(time_split(table, purge=0, horizon=15), table, rich[1]))
    assert "15 training labels cross into validation: their 15-bar label windows" in message
    assert "purge is 0 bars" in message
    assert LeakageGuard().check(time_split(table, horizon=15), table, rich[1]).ok


def test_guard_catches_rows_shared_between_sets(rich):
    "Validation rows copied into training are found by timestamp."
    table, _ = rich
    split = time_split(table)
    shared = Split(pd.concat([split.train, split.val.iloc[100:110]]), split.val, horizon=1, purge=1)
    assert "10 rows/timestamps are in both training and validation" in str(failure(shared, table))


def test_guard_names_every_problem_at_once_without_feature_fn(market, rich):
    "With no feature_fn (the tuner's structural mode), one error still lists each problem: a label-bearing feature and a bad purge."
    bars, _ = market
    table = add_labels(rich[0].drop(columns=["y", "fwd_ret"]), bars, horizon=5)
    table = table.assign(peek_ret=table.fwd_ret.to_numpy())
    message = str(failure(time_split(table, purge=2, horizon=5), table))
    assert message.startswith("leakage guard found 2 problem(s)")
    assert "feature 'peek_ret' alone predicts y with ROC AUC 1.000" in message
    assert "3 training labels cross into validation" in message


@pytest.mark.parametrize("horizon", [1, 15, 240])
def test_honest_features_never_trip_the_auc_check(market, rich, horizon):
    "The single-feature AUC check is calibrated: no honest rich feature trips it, for any label, split, walk-forward or k-fold fold."
    bars, _ = market
    guard = LeakageGuard()
    for dead_zone in (None, 0.5):
        table = add_labels(rich[0].drop(columns=["y", "fwd_ret"]), bars, horizon=horizon, dead_zone=dead_zone)
        for split in [time_split(table, horizon=horizon), *walk_forward(table, n_folds=4, horizon=horizon),
                      *purged_kfold(table, horizon=horizon)]:
            assert guard.auc_problems(split)[0] == [], (dead_zone, split)
    if horizon == 1:
        worst = (guard.auc_problems(time_split(rich[0]))[1].auc - 0.5).abs().max()
        assert worst < guard.max_auc_gap / 2, f"the next-bar label leaves room: honest features reach only ±{worst:.3f}"


def test_purged_kfold_no_leak(honest_set):
    "Every purged k-fold fold of the real data, with its default embargo, passes every check; the folds validate every labelled row once."
    feature_set, table, feature_fn = honest_set
    folds = purged_kfold(table, n_folds=5)
    assert pd.concat([f.val for f in folds]).ts.tolist() == table.ts[table.y.notna()].tolist()
    assert {f.embargo for f in folds} == {FEATURE_SETS[feature_set].lookback - 1}, "the embargo covers the longest look-back"
    for fold in folds[1:-1]:
        assert len(fold.train_before) and len(fold.train_after), "a middle fold trains on both sides"
        assert fold.train_after.ts.iloc[0] == fold.val.ts.iloc[-1] + pd.Timedelta(minutes=fold.embargo + 1)
    for fold in folds:
        report = LeakageGuard().check(fold, table, feature_fn)
        assert report.ok and set(report.checks.values()) == {"passed"}, fold


def test_guard_catches_kfold_without_embargo(rich):
    "A middle fold trained right after its window: the rows there look back into validation and price its last labels."
    table, feature_fn = rich
    message = str(failure(purged_kfold(table, n_folds=4, embargo=0)[1], table, feature_fn))
    assert "240 training rows look back into validation" in message
    assert "'macd_signal' (241 bars)" in message and "'ret1' (2 bars)" in message
    assert "embargo is 0 bars, it needs at least 240" in message
    assert "1 training rows lie inside validation label windows" in message


def test_guard_names_only_the_features_a_short_embargo_leaves_exposed(rich):
    "An embargo of 100 bars covers the 50-bar moving average but not the 180- and 241-bar indicators: those are named."
    table, feature_fn = rich
    problems = failure(purged_kfold(table, n_folds=4, embargo=100)[2], table, feature_fn).report.problems
    assert len(problems) == 1 and problems[0].startswith("140 training rows look back into validation")
    for name in ("macd_signal", "macd_hist", "rsi14", "ema_cross_gap", "macd"): assert repr(name) in problems[0]
    for name in ("sma50_gap", "ret_vol60", "ret1"): assert repr(name) not in problems[0]


def test_the_embargo_follows_an_unregistered_slow_feature(market, rich):
    "A 500-bar moving average the feature store does not know: its warm-up gives its look-back, and the default embargo grows."
    bars, _ = market
    honest, honest_fn = rich
    slow = lambda b: (b.close.rolling(500).mean() / b.close - 1).to_numpy()
    table = honest.assign(slow_gap=slow(bars))
    feature_fn = lambda cut: honest_fn(cut).assign(slow_gap=slow(known_at(bars, cut)))
    assert kfold_embargo(table) == 499
    assert LeakageGuard().check(purged_kfold(table)[2], table, feature_fn).ok
    message = str(failure(purged_kfold(table, embargo=kfold_embargo(honest))[2], table, feature_fn))
    assert "259 training rows look back into validation" in message and "'slow_gap' (500 bars)" in message


def test_guard_catches_kfold_purge_zero_with_multi_bar_label(market, rich):
    "A 15-bar label with no purge before a middle window: the 15 labels before it are made of validation prices."
    bars, _ = market
    table = add_labels(rich[0].drop(columns=["y", "fwd_ret"]), bars, horizon=15)
    problems = failure(purged_kfold(table, purge=0, horizon=15)[2], table, rich[1]).report.problems
    assert problems == [problems[0]] and problems[0].startswith("15 training labels cross into validation: their 15-bar label windows")
    assert "purge is 0 bars" in problems[0]
    assert all(LeakageGuard().check(fold, table, rich[1]).ok for fold in purged_kfold(table, horizon=15))


def test_a_time_split_stays_under_the_strict_rule(rich):
    "The k-fold rule is the fold's to claim: the same rows called a time split, or any hand-made split, must train strictly before."
    table, _ = rich
    fold = purged_kfold(table)[2]
    message = str(failure(replace(fold, kind="time"), table))
    assert f"training time is not strictly before validation time: {len(fold.train_after):,} training rows" in message
    assert "not strictly before" in str(failure(Split(fold.train, fold.val), table))
