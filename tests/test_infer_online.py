"""Online features equal the offline feature table, bar by bar, on the shared real BTC/USDT data.

A live caller has only the last raw bars. For each bar, `online_features` is given the bars up to and including
it (it keeps the last `lookback_bars` of them), and its answer is compared with that bar's row of the feature
table that `build_features` wrote for the whole history: it must be the same, bit for bit. A live feed
(`OnlineFeatures`) that is started from the history before a run of bars and then given them one at a time, as
ccxt lists, must give the same rows. Each bar is its own online computation; the bars are shared out in chunks to a
pool of worker processes, and each chunk is compared in one vectorised check.
"""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from cryptoml.core import DataError, to_ms
from cryptoml.ingest import example_market, funding_exchange, read_bars, read_funding
from cryptoml.features import build_features, feature_names, lookback_bars, read_feature_table
from cryptoml.infer import OnlineFeatures, online_features

CHUNK = 1500

_market = {}  # each worker's bars and funding, read once


def _read_market(home, market):
    _market.update(bars=read_bars(home, market.exchange, market.symbol, market.timeframe),
                   funding=read_funding(home, funding_exchange(market), market.symbol))


def online_rows(feature_set: str, bars_at: list[int]) -> tuple[np.ndarray, np.ndarray]:
    "The online feature row of each bar in `bars_at` (a run of bars), from the frame of bars up to it and from a live feed."
    bars, funding = _market["bars"], _market["funding"]
    from_frames = [list(online_features(bars.iloc[: t + 1], feature_set, funding=funding).values()) for t in bars_at]
    feed = OnlineFeatures(feature_set, funding=funding, bars=bars.iloc[: bars_at[0]])
    run = bars.iloc[bars_at[0]: bars_at[-1] + 1][["ts", "open", "high", "low", "close", "volume"]]
    pushed = [list(feed.push([to_ms(ts), *values]).values()) for ts, *values in run.itertuples(index=False)]
    return np.array(from_frames), np.array(pushed)


@pytest.fixture(scope="module")
def market(bars_csv, tmp_path_factory):
    home = tmp_path_factory.mktemp("online")
    key = example_market(home)
    assert key.exchange != "synthetic"
    _read_market(home, key)
    return home, key


@pytest.fixture(scope="module")
def pool(market):
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_read_market, initargs=market) as workers:
        yield workers


def offline_table(home, key, feature_set):
    table, meta = read_feature_table(build_features(key, home=home, feature_set=feature_set, progress=False))
    assert meta["feature_set"] == feature_set
    return table


@pytest.mark.parametrize("feature_set", ["seed", "rich"])
def test_online_features_equal_the_offline_table_for_every_bar(market, pool, feature_set):
    home, key = market
    bars, table, n = _market["bars"], offline_table(home, key, feature_set), lookback_bars(feature_set)
    assert table["ts"].tolist() == bars["ts"].tolist()
    offline = table[feature_names(feature_set)].to_numpy()
    bars_at = np.arange(n - 1, len(bars))
    chunks = [bars_at[i:i + CHUNK] for i in range(0, len(bars_at), CHUNK)]
    assert np.isfinite(offline[bars_at]).mean() > 0.9, "the comparison would be mostly NaN against NaN"
    for at, rows in zip(chunks, pool.map(online_rows, [feature_set] * len(chunks), [c.tolist() for c in chunks])):
        for path, online in zip(("online_features", "OnlineFeatures.push"), rows):
            bad = (online != offline[at]) & ~(np.isnan(online) & np.isnan(offline[at]))  # bit for bit
            assert not bad.any(), (f"{feature_set}: {path} != offline at {bars.ts.iloc[at[bad.any(axis=1)][0]]}, "
                                   f"features {[f for f, b in zip(feature_names(feature_set), bad.any(axis=0)) if b]}")


def test_too_few_bars_for_the_lookback_are_refused(market):
    bars, n = _market["bars"], lookback_bars("seed")
    with pytest.raises(DataError, match=f"need the last {n} bars; got {n - 1}"): online_features(bars.iloc[: n - 1])


def test_a_feed_refuses_a_bad_bar_and_then_serves_the_next_good_one(market):
    bars = _market["bars"]
    feed = OnlineFeatures("seed", bars=bars.iloc[:1000])
    bar = [to_ms(bars.ts.iloc[1000]), *bars.iloc[1000][["open", "high", "low", "close", "volume"]].tolist()]
    with pytest.raises(DataError, match="not after the previous bar, at 2023-03-01 16:39"): feed.push([bar[0] - 60_000, *bar[1:]])
    with pytest.raises(DataError, match="must be finite"): feed.push([*bar[:4], float("nan"), bar[5]])
    with pytest.raises(DataError, match=r"4 values; this feed's bars are \(ts, open, high, low, close, volume\)"): feed.push(bar[:4])
    assert feed.push(bar) == online_features(bars.iloc[:1001])
