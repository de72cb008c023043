"""The plausibility alarm: honest runs on the shared real data pass it, implausible scores are named with their bound.

Honest runs are real `tune` calls, the leakage guard on, on stored feature tables: the 1-minute BTC/USDT bars at a
1-bar and a 15-bar label, the same bars on a coarse $15 tick where 44% of the bars are flat ("always down" is
right 70% of the time, which the majority rate must explain), and 1-hour perpetuals at 1- and 24-bar labels.
"""
import numpy as np
import pytest

from cryptoml.core import shared_data
from cryptoml.features import build_features, read_feature_table
from cryptoml.core import Market
from cryptoml.ingest import EXAMPLE, example_market, import_csv, read_bars, write_bars
from cryptoml.metrics import MIN_ROWS, implausible, plausible_bounds
from cryptoml.tune import tune


def coarse_market(home):
    "The shared 1-minute BTC bars on a $15 price tick, stored as their own market: about 44% of the bars are flat."
    example_market(home)
    bars = read_bars(home, *EXAMPLE[:3])
    prices = ["open", "high", "low", "close"]
    write_bars(bars.assign(**{c: (bars[c] / 15).round() * 15 for c in prices}), home, "coarse", "BTC/USDT", "1m")
    return Market("coarse", "BTC/USDT", "1m")


def perp(coin: str):
    "A function storing the shared 1-hour perpetual of `coin` in a data root; its market."
    def store(home):
        path = shared_data(f"binance_perp_{coin}USDT_1h_2021-2022.csv")
        if path is None: pytest.skip(f"real market data for {coin} is not on this machine")
        import_csv(path, "binance", f"{coin}/USDT", "1h", home=home)
        return Market("binance", f"{coin}/USDT", "1h")
    return store


HONEST = {  # name: (store the market, feature set, label horizon, validation days)
    "BTC 1m seed, next bar": (example_market, "seed", 1, 7),
    "BTC 1m rich, 15 bars": (example_market, "rich", 15, 7),
    "BTC 1m $15 tick (44% flat), next bar": (coarse_market, "rich", 1, 7),
    "ETH 1h perp rich, next bar": (perp("ETH"), "rich", 1, 120),
    "DOGE 1h perp rich, 24 bars": (perp("DOGE"), "rich", 24, 120),
}


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_runs_on_the_real_data_are_plausible(name, bars_csv, funding_csv, tmp_path):
    store, feature_set, horizon, val_days = HONEST[name]
    market = store(tmp_path)
    table, _ = read_feature_table(build_features(market, home=tmp_path, feature_set=feature_set, horizon=horizon, progress=False))
    result = tune(table, home=tmp_path, n_trials=6, val_days=val_days, n_boot=50, progress=False)
    m, rows = result.metrics, len(result.split.val)
    bounds = plausible_bounds(rows, horizon, m["base_rate"])
    print(f"\n{name}: {rows:,} rows, base rate {m['base_rate']:.3f}: accuracy {m['accuracy']:.4f} (bound {bounds['accuracy']:.4f}), "
          f"ROC AUC {m['roc_auc']:.4f} (bound {bounds['roc_auc']:.4f})")
    assert rows >= MIN_ROWS and result.guard_ran
    assert result.implausible == [] == implausible(m, rows, horizon)


def test_the_majority_rate_explains_always_down_on_flat_bars():
    "BTCUSDC-like: 44% flat bars, 'always down' 70% right, a model a little better: not a leak. Beyond the majority by 0.1: one."
    flat = {"accuracy": 0.71, "roc_auc": 0.66, "base_rate": 0.30}
    assert implausible(flat, 10_000, 1) == []
    leaky = {**flat, "accuracy": 0.80}
    assert [f.split(" on ")[0] for f in implausible(leaky, 10_000, 1)] == ["validation accuracy 0.8000"]
    assert "majority rate 0.7000" in implausible(leaky, 10_000, 1)[0]


@pytest.mark.parametrize("metric, value", [("accuracy", 0.62), ("roc_auc", 0.66)])
def test_an_implausible_score_is_refused_with_the_metric_and_the_bound(metric, value):
    "The issue's rule of thumb at a 1-bar horizon (accuracy > 0.60 or AUC > 0.65 on >= 1000 rows), each metric alone."
    scores = {"accuracy": 0.52, "roc_auc": 0.53, "base_rate": 0.5, metric: value}
    found = implausible(scores, 1_000, 1)
    name = {"accuracy": "accuracy", "roc_auc": "ROC AUC"}[metric]
    assert len(found) == 1 and found[0].startswith(f"validation {name} {value:.4f} on 1,000 rows is beyond what an honest 1-bar model")
    assert f"the bound is {plausible_bounds(1_000, 1, 0.5)[metric]:.4f}" in found[0] and found[0].endswith("a suspected leak")
    assert implausible(scores, MIN_ROWS - 1, 1) == [], "too few rows: not judged"


def test_longer_labels_need_more_rows_to_judge():
    "A 60-bar label on 10,000 rows is 167 independent labels: a score that damns a next-bar model says little there."
    scores = {"accuracy": 0.62, "roc_auc": 0.66, "base_rate": 0.5}
    assert len(implausible(scores, 10_000, 1)) == 2 and implausible(scores, 10_000, 60) == []
    assert len(implausible({**scores, "accuracy": 0.75, "roc_auc": 0.8}, 10_000, 60)) == 2
    bounds = [plausible_bounds(10_000, h, 0.5)["accuracy"] for h in (1, 5, 15, 60)]
    assert bounds == sorted(bounds) and np.all(np.array(bounds) < 1)
