"""The walk-forward backtest as a user relies on it.

The story: the account arithmetic agrees with an independent portfolio simulator (vectorbt) on random signals
with fees and on the reversal rule the backtest trades; whatever fold settings are drawn, no prediction comes
from a model whose training window (plus its purge) reaches the bar it predicts; a leak planted in one fold
stops the backtest at that fold, by name, and leaves no report; on a market with a known edge the intervals
narrow as data grows and exclude no-skill, on a market without one they cover it; and the command refuses bad
input in one line with exit status 2, writing nothing.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cryptoml.core import ConfigError, LeakageError
from cryptoml.ingest import synthetic_market
from cryptoml.features import add_labels, compute_features, features_asof
from test_cli import cryptoml
from cryptoml.backtest import (backtest, period_returns, plan_folds, positions, simulate, strategy_positions,
                               walk_forward_predictions)

vbt = pytest.importorskip("vectorbt")


def oracle_equity(w, returns, cost) -> np.ndarray:
    "vectorbt's account value for positions `w` (-1, 0, 1) held over `returns`, an order wherever the position changes."
    price = np.r_[1.0, np.cumprod(1 + np.asarray(returns, float))]
    held = np.r_[w, w[-1:]]
    size = np.where(np.r_[True, held[1:] != held[:-1]], held, np.nan)
    portfolio = vbt.Portfolio.from_orders(pd.Series(price), size=size, size_type="targetpercent", direction="both", fees=cost,
                                          init_cash=1.0, lock_cash=True, freq="1D")
    return portfolio.value().to_numpy()


@pytest.mark.parametrize("seed", range(12))
def test_random_signals_with_fees_match_vectorbt(seed):
    rng = np.random.default_rng(seed)
    n, short = int(rng.integers(200, 3000)), bool(seed % 3)
    returns = rng.standard_t(4, n) * rng.uniform(0.002, 0.02)
    w = positions(0.5 + rng.normal(0, 0.03, n), rng.uniform(0, 0.04), short)
    assert set(w) == ({-1.0, 0.0, 1.0} if short else {0.0, 1.0})
    cost = float(rng.choice([0.0, 1e-4, 6e-4, 2e-3]))
    equity, _ = simulate(w, returns, cost)
    np.testing.assert_allclose(equity, oracle_equity(w, returns, cost), rtol=1e-9, atol=1e-12)


def labelled(bars: pd.DataFrame, timeframe: str, horizon: int = 1) -> pd.DataFrame:
    "The seed feature table of `bars` with `horizon`-bar labels and its market in the metadata."
    table = add_labels(compute_features(bars, "seed", timeframe=timeframe), bars, horizon=horizon)
    table.attrs["cryptoml"] = {"exchange": "synthetic", "symbol": "SYNTH/USDT", "timeframe": timeframe, "horizon": horizon}
    return table


@pytest.fixture(scope="module")
def hourly():
    "100 days of synthetic hourly bars and their feature table."
    bars = synthetic_market(days=100, seed=3, timeframe="1h")
    return bars, labelled(bars, "1h")


TINY = {"num_leaves": 4, "learning_rate": 0.3, "min_child_samples": 20}
RETURNS = ["ret1", "sma20_gap", "sma50_gap", "vol_z"]  # not the price level, whose AUC over a few trending days can pass for a leak


def test_the_reversal_rule_and_buy_and_hold_trade_as_vectorbt_says(hourly, tmp_path):
    bars, table = hourly
    bt = backtest(table, home=tmp_path, retrain_days=5, min_rows=300, params=TINY, fee_bps=5, slippage_bps=2, n_boot=50,
                  feature_fn=features_asof(bars, "seed", timeframe="1h"), n_jobs=1, progress=False)
    decisions = bt.predictions.dropna(subset=["equity_lgbm"])
    cost, moves = 7e-4, decisions.fwd_ret.to_numpy()
    for name, w in strategy_positions(decisions).items():
        want = oracle_equity(w, moves, cost)
        np.testing.assert_allclose(decisions[f"equity_{name}"], want[1:], rtol=1e-9)
        assert bt.trading["strategies"][name]["total_return"] == pytest.approx(want[-1] - 1, rel=1e-9)
    np.testing.assert_allclose(np.cumprod(1 + period_returns(simulate(decisions.position, moves, cost)[0])), decisions.equity_lgbm,
                               rtol=1e-12)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(horizon=st.integers(1, 4), extra_purge=st.integers(0, 3), embargo=st.integers(0, 6), retrain_days=st.floats(2, 9),
       train_days=st.none() | st.floats(8, 30), min_rows=st.integers(60, 150), warmup_days=st.none() | st.floats(5, 20))
def test_no_prediction_comes_from_a_model_trained_on_or_after_its_bar(hourly, horizon, extra_purge, embargo, retrain_days,
                                                                      train_days, min_rows, warmup_days):
    bars, _ = hourly
    table = labelled(bars.head(1440), "1h", horizon)  # 60 days
    purge = horizon + extra_purge
    try:
        walk = walk_forward_predictions(table, features=RETURNS, retrain_days=retrain_days, train_days=train_days, warmup_days=warmup_days,
                                        purge=purge, embargo=embargo, min_rows=min_rows, params=TINY, n_jobs=1, progress=False)
    except ConfigError as refused:  # a training window too short for the minimums: refused by name, never run short
        assert "lengthen" in str(refused)
        return
    p, folds = walk.predictions, walk.folds.set_index("fold")
    position = pd.Series(np.arange(len(table)), index=table.ts)
    trained_to = position[p.fold.map(folds.train_end)].to_numpy()
    assert (position[p.ts].to_numpy() - trained_to > purge + embargo).all()  # the last training bar, its purge and embargo: all before
    assert (trained_to + horizon < position[p.ts].to_numpy()).all()  # so every training label ended before the predicted bar
    assert (p.model_time <= p.ts).all()
    if train_days is not None:
        assert (folds.train_start >= folds.test_start - pd.Timedelta(days=train_days)).all()
    assert (walk.inner.ts.to_numpy() <= walk.inner.fold.map(folds.train_end).to_numpy()).all()  # early stopping inside training
    assert list(p.ts) == list(table.ts[table.ts >= walk.plan.folds.test_start.iloc[0]])  # every later bar once, in order
    assert (folds.inner_rows >= min_rows).all() and (folds.train_rows >= 2 * min_rows).all()


def test_a_leak_planted_in_one_fold_stops_the_backtest_naming_it(hourly, tmp_path):
    bars, table = hourly
    folds = plan_folds(table, 4, min_rows=300).folds
    leaky = table.copy()
    in_fold_3 = (leaky.ts >= folds.test_start[2]) & (leaky.ts < folds.test_end[2])
    leaky.loc[in_fold_3, "ret1"] = leaky.fwd_ret[in_fold_3]  # fold 3's bars "know" the next bar's return
    feature_fn = features_asof(bars, "seed", timeframe="1h")
    with pytest.raises(LeakageError) as stopped:
        backtest(leaky, home=tmp_path, retrain_days=4, min_rows=300, params=TINY, feature_fn=feature_fn, n_jobs=2, progress=False)
    said = str(stopped.value)
    assert said.startswith(f"fold 3 (training {table.ts[0]}") and "feature 'ret1' is not point-in-time" in said  # its test rows
    assert not list(tmp_path.glob("backtests/*/*/*/*/backtest.json")) and not list(tmp_path.glob("backtests/*/*/*/*/predictions.parquet"))
    clean = backtest(table, home=tmp_path, retrain_days=4, min_rows=300, params=TINY, feature_fn=feature_fn, n_boot=50, progress=False)
    assert set(clean.folds.guard.map(lambda g: g["point in time"])) == {"passed"}


def edge_table(n: int, edge: float, seed: int = 0) -> pd.DataFrame:
    "Hourly rows whose feature `x` moves P(up) to 0.5 + `edge` tanh(x); `noise` is a useless feature."
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    up = rng.random(n) < 0.5 + edge * np.tanh(x)
    move = rng.exponential(0.005, n) * np.where(up, 1, -1)
    table = pd.DataFrame({"ts": pd.date_range("2022-01-01", periods=n, freq="1h", tz="UTC"), "x": x, "noise": rng.normal(size=n),
                          "ret1": np.r_[np.nan, move[:-1]], "fwd_ret": move, "y": up.astype(float)})
    table.attrs["cryptoml"] = {"exchange": "test", "symbol": "EDGE/USDT", "timeframe": "1h", "horizon": 1}
    return table


def overall(table: pd.DataFrame, **kw):
    "The overall report and trading table of a quick backtest of `table`."
    bt = backtest(table, retrain_days=30, min_rows=500, params=TINY, n_boot=300, progress=False, **kw)
    return bt.report["overall"], bt.trading["strategies"]["lgbm"]


def width(ci) -> float: return ci[1] - ci[0]


def test_intervals_narrow_with_data_on_an_edge_and_cover_no_skill_without_one():
    small, _ = overall(edge_table(6_000, 0.1))
    large, _ = overall(edge_table(24_000, 0.1))
    for metric in ("roc_auc", "accuracy"):
        assert width(large["scores"]["lgbm"]["ci95"][metric]) < 0.7 * width(small["scores"]["lgbm"]["ci95"][metric])
    assert width(large["ic"]["ci95"]) < 0.7 * width(small["ic"]["ci95"])
    assert large["scores"]["lgbm"]["ci95"]["roc_auc"][0] > 0.5 and large["ic"]["ci95"][0] > 0
    none, trading = overall(edge_table(24_000, 0.0, seed=1), fee_bps=0, slippage_bps=0)
    lo, hi = none["scores"]["lgbm"]["ci95"]["roc_auc"]
    assert lo < 0.5 < hi
    assert none["ic"]["ci95"][0] < 0 < none["ic"]["ci95"][1]
    assert trading["sharpe_ci95"][0] < 0 < trading["sharpe_ci95"][1]
    gain = next(g for g in none["gains"] if (g["baseline"], g["metric"]) == ("majority", "accuracy"))
    assert gain["lo"] < 0 < gain["hi"]


def test_folds_on_two_processes_give_what_one_gives(hourly):
    _, table = hourly
    runs = [walk_forward_predictions(table, retrain_days=6, min_rows=300, params=TINY, n_jobs=n, progress=False) for n in (1, 2)]
    pd.testing.assert_frame_equal(runs[0].predictions, runs[1].predictions)


def test_tuning_every_few_folds_tunes_each_group_on_its_own_first_fold(hourly):
    _, table = hourly
    walk = walk_forward_predictions(table, retrain_days=10, min_rows=300, tune_every=2, n_trials=3, n_jobs=2, progress=False)
    assert len(walk.params) == -(-len(walk.folds) // 2)
    assert all(p["num_threads"] == 1 for p in walk.params)


SYNTH = ["--exchange", "synthetic", "--symbol", "SYNTH/USDT", "--timeframe", "1m"]
SMALL = ["--retrain-days", 0.5, "--min-val-rows", 500, "--boot", 100, "--trials", 3]


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    "A data root holding four days of the demo market and its feature table."
    home = tmp_path_factory.mktemp("demo")
    assert cryptoml("demo", "--days", 4, home=home).returncode == 0
    assert cryptoml("features", *SYNTH, "--funding-exchange", "synthetic", home=home).returncode == 0
    return home


def test_the_command_prints_the_tables_and_stores_the_report(demo_home):
    done = cryptoml("backtest", *SYNTH, *SMALL, home=demo_home)
    assert done.returncode == 0, done.stderr
    assert "Out-of-sample scores" in done.stdout and "buy and hold" in done.stdout and "Walk-forward on synthetic SYNTH/USDT 1m" in done.stdout
    stored = done.stdout.strip().splitlines()[-1].removeprefix("stored in ")
    doc = json.loads((Path(stored)/"backtest.json").read_text())
    assert doc["settings"]["retrain_days"] == 0.5 and doc["trading"]["fee_bps"] == 5.0
    assert set(doc["folds"][0]["guard"].values()) == {"passed"}
    assert pd.read_parquet(Path(stored)/"predictions.parquet").columns[:6].tolist() == ["ts", "fold", "model_time", "p_up", "y", "fwd_ret"]


@pytest.mark.parametrize("bad, says", [
    (["--fee-bps", -1], "fee_bps must be a number of basis points in [0, 10000), not -1.0"),
    (["--threshold", 0.5], "threshold must be in [0, 0.5) (a distance from p_up = 0.5), not 0.5"),
    (["--retrain-days", 0.0001], "retrain_days=0.0001 (0.144 bars) is shorter than the label horizon of 1 bars"),
    (["--min-val-rows", 4000], "too few for one fold"),
    (["--exchange", "binance"], "no feature table at"),  # binance's SYNTH/USDT is another market, with no table
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(demo_home, bad, says):
    before = sorted(demo_home.rglob("*"))
    done = cryptoml("backtest", *SYNTH, *SMALL, *bad, home=demo_home)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith("cryptoml backtest: error: ") and says in done.stderr and done.stderr.count("\n") == 1
    assert sorted(demo_home.rglob("*")) == before


def test_a_table_with_a_gap_longer_than_the_embargo_is_refused(tmp_path):
    bars = synthetic_market(days=4, seed=0)
    bars = bars.drop(index=range(3000, 3010))
    csv = tmp_path/"gappy.csv"
    bars.to_csv(csv, index=False)
    home = tmp_path/"home"
    assert cryptoml("import", csv, *SYNTH, home=home).returncode == 0
    assert cryptoml("features", *SYNTH, home=home).returncode == 0
    done = cryptoml("backtest", *SYNTH, *SMALL, home=home)
    assert done.returncode == 2 and "the table skips 10 bars after 2023-03-03 01:59:00+00:00" in done.stderr
    assert not (home/"backtests").exists()


def test_pipeline_with_backtest_adds_the_walk_forward(tmp_path):
    done = cryptoml("pipeline", "--demo", "--days", 4, "--trials", 2, "--val-days", 1, "--backtest", *SMALL[:-2], home=tmp_path)
    assert done.returncode == 1, done.stderr  # a 2-trial model on 4 days does not beat the baselines: refused, and still backtested
    assert "[6/6] walk-forward backtest" in done.stderr
    assert "promotion: refused (does not beat majority" in done.stdout and "Walk-forward on synthetic SYNTH/USDT 1m" in done.stdout
    assert len(list(tmp_path.glob("backtests/synthetic/SYNTHUSDT/1m/*/backtest.json"))) == 1

