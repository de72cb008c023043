"""The feature store on the shared real market data: point in time for every registered feature, funding known only
from its timestamp on, labels, bad input, and the feature table written, read back and queried with DuckDB.

A feature is point-in-time when its value for bar t is the same whether it is computed from the bars up to t or from
the whole history, and the online path (the last `lookback` bars only) gets that value too, to the last bit. Both are
checked here at many cut points, for every registered feature, including the pieces (EMAs) no set uses directly.
"""
import subprocess, sys, time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import cryptoml.features as features
from cryptoml.core import ConfigError, DataError, Market, feature_path, parquet_metadata
from cryptoml.features import (FEATURES, FeatureSet, add_labels, bar_arrays, build_features, compute_features, connect,
                               content_digest, ema_alpha, ema_window, feature_code_sha256, feature_matrix, feature_names,
                               features_asof, finite_ema, lookback_bars, read_feature_table, register_feature, rolling_mean_std,
                               rolling_sum, table_view, write_feature_table)
from cryptoml.ingest import example_market, funding_exchange, read_bars, read_funding, write_bars

EVERY_FEATURE = FeatureSet("every", 0, tuple(FEATURES))


@pytest.fixture(scope="module")
def market(bars_csv, funding_csv, tmp_path_factory):
    "The shared real bars and funding rates, imported into a fresh data root and read back, and the root."
    home = tmp_path_factory.mktemp("home")
    key = example_market(home)
    return read_bars(home, *key[:3]), read_funding(home, funding_exchange(key), key.symbol), home, key


@pytest.fixture(scope="module")
def every(market):
    "Every registered feature on the full real history."
    bars, funding, *_ = market
    return compute_features(bars, EVERY_FEATURE, funding=funding)


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame):
    "`got` has `expected`'s rows to the last bit (NaN where it has NaN), whatever their index."
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_exact=True)


def one(con, sql: str) -> tuple:
    "The first row of a query's result."
    return con.sql(sql).fetchall()[0]


def cut_points(n: int, lookback: int, count: int = 40) -> list[int]:
    "Cut rows spread over the history, plus the edges: the first fully known row and the last row."
    return sorted({lookback - 1, lookback, n - 1, *np.linspace(lookback, n - 1, count).astype(int)})


def test_every_feature_is_the_same_on_data_up_to_t_as_on_the_full_history(market, every):
    bars, funding, *_ = market
    for cut in cut_points(len(bars), EVERY_FEATURE.lookback):
        known = compute_features(bars.iloc[:cut + 1], EVERY_FEATURE, funding=funding[funding.ts <= bars.ts.iloc[cut] + pd.Timedelta("1min")])
        pd.testing.assert_frame_equal(known.iloc[[-1]], every.iloc[[cut]], check_exact=True)


def test_each_feature_is_known_from_exactly_its_lookback_as_the_online_path_computes_it(market, every):
    bars, funding, *_ = market
    for name, feature in FEATURES.items():
        one = FeatureSet(name, 0, (name,))
        for cut in cut_points(len(bars), feature.lookback, count=25):
            window = bars.iloc[cut + 1 - feature.lookback:cut + 1]
            online = compute_features(window, one, funding=funding)[name].iloc[-1]
            np.testing.assert_array_equal(online, every[name].iloc[cut], err_msg=f"{name} at row {cut}")
            if feature.lookback > 1:
                assert np.isnan(compute_features(window.iloc[1:], one, funding=funding)[name].iloc[-1]), f"{name} known from {feature.lookback - 1} bars"


def test_warm_up_rows_are_nan_and_every_other_row_is_known(market, every):
    bars, *_ = market
    for name, feature in FEATURES.items():
        if name in ("taker_imbalance", "funding_rate"): continue  # NaN for want of data, tested below
        values = every[name].to_numpy()
        assert np.isnan(values[:feature.lookback - 1]).all() and np.isfinite(values[feature.lookback - 1:]).all(), name


def test_the_future_cannot_move_the_past(market, every):
    "Scrambling every bar after a cut changes no feature at or before it."
    bars, funding, *_ = market
    cut, rng = 20_000, np.random.default_rng(0)
    after = bars.index > cut
    scrambled = bars.copy()
    for c in ("open", "high", "low", "close", "volume"):
        scrambled.loc[after, c] = rng.permutation(bars.loc[after, c].to_numpy())
    moved = compute_features(scrambled, EVERY_FEATURE, funding=funding)
    pd.testing.assert_frame_equal(moved.iloc[:cut + 1], every.iloc[:cut + 1], check_exact=True)
    assert not moved.iloc[cut + 300:].equals(every.iloc[cut + 300:])


def test_chunked_computation_is_prefix_exact_and_matches_one_pass(market, every, monkeypatch):
    "Millions of bars are computed in chunks: here chunks of 4096 bars on the 30 K real ones."
    bars, funding, *_ = market
    monkeypatch.setattr(features, "CHUNK_ROWS", 4096)
    chunked = compute_features(bars, EVERY_FEATURE, funding=funding)
    assert_same_rows(chunked, every)
    for cut in (4095, 4096, 4097, 8191 + 300, 3 * 4096 + EVERY_FEATURE.lookback):
        prefix = compute_features(bars.iloc[:cut + 1], EVERY_FEATURE, funding=funding)
        pd.testing.assert_frame_equal(prefix.iloc[[-1]], chunked.iloc[[cut]], check_exact=True)


def test_the_table_is_streamed_in_row_groups_with_exactly_the_values_computed_in_memory(market, tmp_path, monkeypatch):
    bars, funding, *_ = market
    monkeypatch.setattr(features, "CHUNK_ROWS", 7000)
    path = write_feature_table(tmp_path/"t.parquet", bars, "rich", funding=funding, horizon=2, metadata={"note": "streamed"})
    assert pq.ParquetFile(path).metadata.num_row_groups == 5 and parquet_metadata(path) == {"note": "streamed"}
    group = pq.ParquetFile(path).metadata.row_group(0)
    assert all("BYTE_STREAM_SPLIT" in group.column(i).encodings and group.column(i).compression == "LZ4"  # LZ4_RAW
               for i in range(group.num_columns))
    assert group.column(0).statistics.has_min_max  # ts: a reader filtering on time skips row groups
    expected = add_labels(compute_features(bars, "rich", funding=funding), bars, horizon=2)
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected, check_exact=True)


def test_windows_stay_exact_over_millions_of_bars_where_running_sums_do_not():
    "A 20 000-priced random walk over 1 M bars: the last windows from their own bars match the full history."
    rng = np.random.default_rng(1)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, 1_000_000)))
    volume = np.round(rng.exponential(2.0, close.size), 3)
    mean, std = rolling_mean_std(close, 20)
    naive = np.cumsum(close), np.cumsum(close * close)
    s1, s2 = naive[0][-1] - naive[0][-21], naive[1][-1] - naive[1][-21]
    naive_std = np.sqrt((s2 - s1 * s1 / 20) / 19)
    assert abs(naive_std / std[-1] - 1) > 1e-6  # running sums have lost the digits this test asks for
    assert std[-1] == rolling_mean_std(close[-20:], 20)[1][-1] and mean[-1] == rolling_mean_std(close[-20:], 20)[0][-1]
    np.testing.assert_allclose(std[-1], np.std(close[-20:], ddof=1), rtol=1e-12)
    bars = pd.DataFrame({"ts": pd.date_range("2004-01-01", periods=close.size, freq="1min", tz="UTC").as_unit("ms"),
                         "open": close, "high": close * 1.0005, "low": close * 0.9995, "close": close, "volume": volume})
    full = compute_features(bars, "rich")
    n = lookback_bars("rich")
    for end in (close.size - 77_777, close.size):
        online = compute_features(bars.iloc[end - n:end], "rich")
        assert_same_rows(online.iloc[[-1]], full.iloc[[end - 1]])


def test_funding_is_invisible_before_its_timestamp(market):
    bars, funding, *_ = market
    stamps = funding[(funding.ts > bars.ts.iloc[100]) & (funding.ts < bars.ts.iloc[-100])].reset_index(drop=True)
    distinct = stamps.assign(funding_rate=np.arange(1.0, len(stamps) + 1))  # real rates repeat; these name their stamp
    got = compute_features(bars, "rich", funding=distinct).funding_rate.to_numpy()
    closes = bars.ts + pd.Timedelta("1min")
    for ts, rate in zip(distinct.ts, distinct.funding_rate):
        first = int(closes.searchsorted(ts))  # the first bar that closes at or after the stamp
        np.testing.assert_array_equal(got[first - 1:first + 1], [rate - 1 if rate > 1 else np.nan, rate], err_msg=str(ts))
    asof = features_asof(bars, "rich", funding=distinct)
    stamp = distinct.ts.iloc[5]
    assert asof(stamp - pd.Timedelta("1ms")).funding_rate.iloc[-1] == 5.0
    assert asof(stamp + pd.Timedelta("59s")).funding_rate.iloc[-1] == 6.0
    assert np.isnan(compute_features(bars, "rich").funding_rate).all()


def test_features_asof_sees_only_bars_closed_by_the_cut(market, every):
    bars, funding, *_ = market
    asof = features_asof(bars, EVERY_FEATURE, funding=funding)
    for cut in pd.to_datetime(["2023-03-05 00:00:00", "2023-03-10 13:37:30", "2023-03-21 23:59:00"], utc=True):
        t = asof(cut)
        assert (t.ts + pd.Timedelta("1min") <= cut).all() and len(t) == (bars.ts + pd.Timedelta("1min") <= cut).sum()
        pd.testing.assert_frame_equal(t, every.iloc[:len(t)], check_exact=True)


def test_labels_say_whether_the_bar_h_ahead_closes_higher(market):
    bars, *_ = market
    close = bars.close
    for h in (1, 5):
        t = add_labels(bars[["ts"]], bars, horizon=h)
        np.testing.assert_array_equal(t.y.iloc[:-h], (close.shift(-h) > close).astype(float).iloc[:-h])
        np.testing.assert_allclose(t.fwd_ret.iloc[:-h], (close.shift(-h) / close - 1).iloc[:-h], rtol=1e-14)
        assert t.y.iloc[-h:].isna().all() and t.fwd_ret.iloc[-h:].isna().all()
    flat = add_labels(bars[["ts"]], bars).y[(close.shift(-1) == close).to_numpy()]
    assert len(flat) > 0 and (flat == 0).all()  # 'up' is strictly up


def test_the_dead_zone_drops_exactly_the_small_moves(market):
    bars, *_ = market
    plain, dead = add_labels(bars[["ts"]], bars, horizon=3), add_labels(bars[["ts"]], bars, horizon=3, dead_zone=0.5)
    vol = bars.close.pct_change().rolling(20).std().to_numpy() * np.sqrt(3)
    small = ~(np.abs(plain.fwd_ret.to_numpy()) >= 0.5 * vol)
    assert 0.2 < small.mean() < 0.6
    np.testing.assert_array_equal(dead.y.isna().to_numpy(), small | plain.y.isna().to_numpy())
    np.testing.assert_array_equal(dead.y[~small], plain.y[~small])
    pd.testing.assert_series_equal(dead.fwd_ret, plain.fwd_ret)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.drop(columns=["close", "volume"]), "missing column(s) close, volume"),
    (lambda b: b.iloc[[0, 1, 3, 2, 4]], "ts not sorted: 2023-03-01 00:02:00+00:00 comes after 2023-03-01 00:03:00+00:00"),
    (lambda b: pd.concat([b.iloc[:3], b.iloc[2:5]]), "duplicate ts 2023-03-01 00:02:00+00:00"),
    (lambda b: b.assign(ts=b.ts.astype(str)), "'ts' must hold datetimes"),
    (lambda b: b.assign(volume=b.volume.where(b.index != 3)), "'volume' is not finite at ts 2023-03-01 00:03:00+00:00"),
    (lambda b: b.assign(ts=b.ts.where(b.index != 2)), "missing time at row 2"),
])
def test_bad_bars_are_refused_with_the_reason(market, change, message):
    bars, *_ = market
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        compute_features(change(bars.iloc[:300]), "rich")


def test_the_last_bars_are_taken_and_checked_without_the_rest(market):
    bars, funding, *_ = market
    full, tail = bar_arrays(bars, funding=funding), bar_arrays(bars.assign(close=bars.close.where(bars.index != 5)), funding=funding, last=300)
    assert (tail.ts == full.ts[-300:]).all() and all((tail.columns[c] == full.columns[c][-300:]).all() for c in full.columns)
    assert (tail.funding_ts == full.funding_ts).all() and len(bar_arrays(bars.iloc[:10], last=300)) == 10
    with pytest.raises(DataError, match="'close' is not finite at ts"): bar_arrays(bars.assign(close=bars.close.where(bars.index != len(bars) - 2)), last=300)
    with pytest.raises(DataError, match=f"missing time at row {len(bars) - 10}"): bar_arrays(bars.assign(ts=bars.ts.where(bars.index != len(bars) - 10)), last=300)


def test_bad_arguments_are_refused_by_name(market):
    bars, funding, *_ = market
    with pytest.raises(ConfigError, match="unknown feature set 'gold'"): compute_features(bars, "gold")
    with pytest.raises(DataError, match="funding: duplicate ts"): compute_features(bars, funding=pd.concat([funding, funding.iloc[[-1]]]))
    with pytest.raises(DataError, match="is not a bar"): add_labels(bars[["ts"]], bars.iloc[:-5])
    with pytest.raises(ConfigError, match="horizon"): add_labels(bars[["ts"]], bars, horizon=1.5)
    with pytest.raises(ConfigError, match="timeframe"): compute_features(bars, timeframe="1q")


def test_a_new_feature_is_added_by_registering_a_function(market, monkeypatch):
    bars, *_ = market
    monkeypatch.setattr(features, "FEATURES", dict(FEATURES))
    @register_feature("range_z", lookback=30)
    def range_z(b):
        "The bar's high-low range as a z-score over 30 bars."
        mean, std = rolling_mean_std(b["hl_range"], 30)
        return (b["hl_range"] - mean) / std
    mine = FeatureSet("mine", 3, ("ret1", "range_z"))
    t = compute_features(bars, mine)
    assert list(t.columns) == ["ts", "ret1", "range_z"] and mine.lookback == 30 and t.range_z.iloc[:29].isna().all()
    hl = (bars.high - bars.low) / bars.close
    np.testing.assert_allclose(t.range_z.iloc[29:], ((hl - hl.rolling(30).mean()) / hl.rolling(30).std()).iloc[29:], rtol=1e-6)
    with pytest.raises(ConfigError, match="'range_z' is already registered"): register_feature("range_z", 1)(lambda b: b.close)


def test_the_feature_table_is_written_with_its_metadata_and_queried_in_sql(market):
    bars, funding, home, key = market
    path = build_features(key, home=home, feature_set="rich", horizon=2, dead_zone=0.25, progress=False)
    assert path == feature_path(home, key, "rich", 2) and [p.name for p in path.parent.iterdir()] == [path.name]
    table, meta = read_feature_table(path)
    assert meta == parquet_metadata(path)
    assert meta == dict(
        feature_set="rich", version=1, features=feature_names("rich"), lookback=lookback_bars("rich"), horizon=2,
        dead_zone=0.25, exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe,
        funding_exchange=funding_exchange(key), rows=len(bars), bars=content_digest(bars), funding=content_digest(funding),
        code_sha256=feature_code_sha256(feature_names("rich")))  # what it was built from, and no time of building
    expected = add_labels(compute_features(bars, "rich", funding=funding), bars, horizon=2, dead_zone=0.25)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    con = connect(home)
    assert one(con, "SELECT count(*), max(close) FROM bars WHERE symbol = 'BTCUSDT' AND timeframe = '1m'") == (len(bars), bars.close.max())
    assert one(con, "SELECT count(*) FROM funding WHERE exchange = 'binance'")[0] == len(funding)
    up, labelled = one(con, f'SELECT sum(y), count(y) FROM "{table_view(path)}"')
    assert (up, labelled) == (table.y.sum(), table.y.notna().sum())
    assert con.sql("SELECT DISTINCT exchange, symbol, timeframe, file FROM features").fetchall() == [(key.exchange, "BTCUSDT", "1m", "rich-h2.parquet")]


def test_the_store_views_follow_what_exists(tmp_path, market):
    bars, *_ = market
    assert one(connect(tmp_path), "SELECT count(*) FROM information_schema.tables") == (0,)
    write_bars(bars.iloc[:500], tmp_path, "binance", "ETH/USDT", "1m")
    with pytest.raises(DataError, match="no bars in"): build_features(Market("binance", "BTC/USDT", "1m"), home=tmp_path, progress=False)
    eth = build_features(Market("binance", "ETH/USDT", "1m"), home=tmp_path, progress=False)
    con = connect(tmp_path)
    assert con.sql("SELECT exchange, symbol, count(*) FROM bars GROUP BY ALL").fetchall() == [("binance", "ETHUSDT", 500)]
    assert one(con, f'SELECT count(*) FROM "{table_view(eth)}" WHERE vol_z IS NOT NULL') == (481,)


def test_the_online_path_is_quick_on_its_last_bars(market):
    "Generous bounds (about 0.15 and 0.4 ms on a quiet machine): they catch a slow path, not load."
    bars, funding, *_ = market
    for name, limit_ms in (("seed", 1.5), ("rich", 3)):
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            feature_matrix(bar_arrays(bars, funding=funding, last=lookback_bars(name)), name)[:, -1]
            times.append(time.perf_counter() - t0)
        assert np.median(times) * 1e3 < limit_ms, (name, np.median(times))


def test_window_sums_match_brute_force_for_every_length():
    rng = np.random.default_rng(2)
    x = rng.normal(100, 5, 300)
    for w in range(2, 130):
        sums, (mean, std) = rolling_sum(x, w), rolling_mean_std(x, w)
        brute = np.lib.stride_tricks.sliding_window_view(x, w)
        np.testing.assert_allclose(sums[w - 1:], brute.sum(axis=1), rtol=1e-13)
        np.testing.assert_allclose(std[w - 1:], brute.std(axis=1, ddof=1), rtol=1e-9)
        assert np.isnan(sums[:w - 1]).all() and np.isnan(mean[:w - 1]).all()


def test_the_emas_are_the_recursion_they_replaced_to_twelve_digits(market):
    "scipy's `lfilter` ran the finite EMA as a recursion; the window sums that replaced it give the same numbers."
    from scipy.signal import lfilter
    bars, *_ = market
    x = bars.close.to_numpy()
    for alpha in (ema_alpha(9), ema_alpha(12), ema_alpha(26), 1 / 14):
        w, decay = ema_window(alpha), 1 - alpha
        z = x * (alpha / (1 - decay ** w))
        z[w:] -= x[:-w] * (alpha * decay ** w / (1 - decay ** w))
        np.testing.assert_allclose(finite_ema(x, alpha)[w - 1:], lfilter([1.0], [1.0, -decay], z)[w - 1:], rtol=1e-12, atol=0)


def test_importing_the_features_loads_no_scipy_duckdb_plotly_or_exchange_clients():
    heavy = ("scipy", "duckdb", "plotly", "ccxt", "sklearn", "optuna", "tqdm")
    code = f"import sys, cryptoml.features; print(*[m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == []
