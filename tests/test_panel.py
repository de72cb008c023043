"""Panel features on the shared real data: every panel feature is point in time (recomputed from only the data known at
many cuts it is the same, bit for bit) on the six shared perpetuals and on the real BTC minute bars, and the online path
(a market's and its reference's last history window only) gives the table's value, bit for bit too; a cross-pair feature that reads a
reference bar closing after the target bar is caught by the leakage guard; bad input is refused or documented NaN.

The shared files carry bars only, so the tests give them what the features also read: taker buy volume (a share of
each bar's volume leaning with its move), 8-hourly funding rates and hourly open interest, from the synthetic
generators (`cryptoml.ingest.synthetic_funding`, `synthetic_interest`). The minute bars' reference is a synthetic minute
market over the same weeks that lists two days later and misses 1% of its bars.
"""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cryptoml.core import ConfigError, DataError, LeakageError, Market, shared_data
from cryptoml.features import read_feature_table
from cryptoml.ingest import import_many, read_bars, synthetic_funding, synthetic_interest, synthetic_market
from cryptoml.panel import (PANEL_FEATURES, PanelSet, build_panel, compute_panel, make_panel, market_contexts, market_data,
                            panel_asof, panel_table_asof, register_panel_feature, reference_of, synthetic_panel, take,
                            write_demo_panel, write_panel_table)
from cryptoml.split import check_panel, guard_panel, panel_split
from cryptoml.tune import tune

SIX = [f"binance_perp_{coin}USDT_1h_2021-2022.csv" for coin in ("BTC", "ETH", "SOL", "BNB", "DOGE", "LINK")]
EVERY = PanelSet("every", 0, tuple(PANEL_FEATURES))   # every panel feature, the expansions and cross-pair ones included


def with_flows(bars: pd.DataFrame, seed: int) -> pd.DataFrame:
    "`bars` with taker buys: a share of each bar's volume leaning with its move."
    rng = np.random.default_rng(seed)
    move = np.log(bars.close / bars.open).to_numpy()
    lean = np.clip(0.5 + 0.15 * np.tanh(move / np.nanstd(move)) + rng.normal(0, 0.05, len(bars)), 0.05, 0.95)
    return bars.assign(taker_buy_base=(bars.volume * lean).round(6))


def series(market: Market, bars: pd.DataFrame, seed: int) -> dict:
    "A market's bars with taker buys, and synthetic funding rates and open interest over them."
    bars = with_flows(bars, seed)
    return market_data(market, bars, synthetic_funding(bars, seed), synthetic_interest(bars, seed))


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    "The six shared perpetuals, imported (each file's market from its name) and read back, as a panel with BTC the reference."
    paths = [shared_data(name) for name in SIX]
    if None in paths: pytest.skip("the shared six-market data is not on this machine (../shared/data); CI has it")
    home = tmp_path_factory.mktemp("six")
    report = import_many(paths, "binance", home=home, progress=False)
    assert report.ok and [k.symbol for k in report.reports] == [f"{c}/USDT" for c in ("BTC", "ETH", "SOL", "BNB", "DOGE", "LINK")]
    markets = list(report.reports)
    return make_panel([series(m, read_bars(home, *m), i) for i, m in enumerate(markets)], reference="BTC/USDT", name="six")


@pytest.fixture(scope="module")
def minutes(bars_csv, funding_csv):
    "The real BTC/USDT minute bars, with the real funding rates, and a synthetic minute market as their reference."
    from cryptoml.ingest import as_bars, as_funding, read_csv_rows
    real = with_flows(as_bars(read_csv_rows(bars_csv)), 0)
    other = synthetic_market(days=19, seed=5, start="2023-03-03")
    other = other.drop(index=np.random.default_rng(5).choice(len(other), len(other) // 100, replace=False)).reset_index(drop=True)
    btc = market_data(Market("binanceus", "BTC/USDT", "1m"), real, as_funding(read_csv_rows(funding_csv)), synthetic_interest(real))
    return make_panel([btc, series(Market("synthetic", "REF/USDT", "1m"), other, 7)], reference="REF/USDT", name="minutes")


def cuts(panel: pd.DataFrame, count: int) -> list[pd.Timestamp]:
    "Bar closes spread over the panel's history, plus its first and last."
    closes = np.sort(panel.ts.unique())
    bar = closes[1] - closes[0]
    return sorted({pd.Timestamp(closes[i] + bar) for i in [0, len(closes) - 1, *np.linspace(0, len(closes) - 1, count).astype(int)]})


def assert_point_in_time(panel, count: int):
    "Every feature of every market equals, bit for bit, its value recomputed from the data known at each cut."
    full, asof = compute_panel(panel, EVERY), panel_asof(panel, EVERY)
    for code, label in enumerate(panel.labels):
        rows = full[full.market == code].drop(columns="market").reset_index(drop=True)
        for cut in cuts(full, count):
            known = asof(label, cut)
            assert len(known) == (rows.ts + panel.markets[label].bars.bar_ms * pd.Timedelta("1ms") <= cut).sum()
            pd.testing.assert_frame_equal(known, rows.iloc[:len(known)], check_exact=True, obj=f"{label} at {cut}")


def assert_online(panel, count: int):
    "Each market's newest row computed from only its and its reference's last history window equals the table's row, bit for bit."
    full = compute_panel(panel, EVERY)
    span, bars = EVERY.history
    for code, label in enumerate(panel.labels):
        rows = full[full.market == code].reset_index(drop=True)
        for cut in cuts(full, count)[1:]:
            known = [d.known_at(cut) for d in panel.markets.values()]
            if not len(known[code].bars): continue
            windowed = make_panel([d.window(span, bars + 1) if len(d.bars) else d for d in known], panel.reference, panel.name)
            m = next(m for _, name, m in market_contexts(windowed) if name == label)
            online = np.array([m[name][-1] for name in EVERY.features])
            table = rows.loc[len(known[code].bars) - 1, list(EVERY.features)].to_numpy(float)
            np.testing.assert_array_equal(online, table, err_msg=f"{label} at {cut}")


def assert_runs_exact(panel, rows: int, folder, encode_ahead: bool = True):
    "The table written in runs of at most `rows` bars holds, bit for bit, the values computed a whole market at a time."
    path = write_panel_table(folder/f"runs-{rows}.parquet", panel, EVERY, horizon=2, dead_zone=0.3, encode_ahead=encode_ahead,
                             rows=rows)
    whole = compute_panel(panel, EVERY, horizon=2, dead_zone=0.3)
    pd.testing.assert_frame_equal(pd.read_parquet(path), whole, check_exact=True, obj=f"runs of {rows}")
    groups = pq.ParquetFile(path).metadata
    markets = [groups.row_group(g).column(0).statistics for g in range(groups.num_row_groups)]
    assert [s.min for s in markets] == [s.max for s in markets]   # a row group holds one market's rows
    assert groups.num_row_groups == sum(-(-len(d.bars) // rows) for d in panel.markets.values())
    assert max(groups.row_group(g).num_rows for g in range(groups.num_row_groups)) <= rows


@pytest.mark.parametrize("rows", [1000, 4096])
def test_a_table_written_in_runs_of_bars_holds_the_whole_markets_values_on_the_six_shared_markets(six, rows, tmp_path):
    assert_runs_exact(six, rows, tmp_path)


def test_a_table_written_in_runs_of_bars_holds_the_whole_markets_values_on_the_real_minutes(minutes, tmp_path):
    assert_runs_exact(minutes, 5000, tmp_path, encode_ahead=False)


@pytest.mark.parametrize("rows", [7, 500])
def test_runs_shorter_than_their_history_give_the_same_values_on_staggered_markets_with_gaps(rows, tmp_path):
    "Runs far shorter than the 27 days of history the daily features read, markets listed days apart, 2% of bars missing."
    synth = synthetic_panel(markets=3, days=40, seed=2, stagger_days=4, missing=0.02)
    panel = make_panel([market_data(Market("synthetic", s, "1h"), **p) for s, p in synth.items()], reference="SYNB/USDT")
    assert_runs_exact(panel, rows, tmp_path)


@pytest.mark.parametrize("encode_ahead", [True, False])
def test_a_build_failing_in_a_late_run_leaves_the_stored_table_as_it_was(encode_ahead, tmp_path):
    synth = synthetic_panel(markets=3, days=30, seed=3)
    panel = make_panel([market_data(Market("synthetic", s, "1h"), **p) for s, p in synth.items()], reference="SYNA/USDT")
    path = write_panel_table(tmp_path/"table.parquet", panel, "lead", rows=200)
    stored, late = path.read_bytes(), panel.markets["SYNC/USDT"].bars.ts[400]

    @register_panel_feature("breaks_late")
    def _breaks_late(m):
        if m.b.ts[-1] >= late: raise DataError("a late run breaks")
        return m["ret1"]
    try:
        with pytest.raises(DataError, match="a late run breaks"):
            write_panel_table(path, panel, PanelSet("breaks", 1, ("ret1", "breaks_late")), encode_ahead=encode_ahead, rows=200)
    finally: del PANEL_FEATURES["breaks_late"]
    assert path.read_bytes() == stored and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_every_panel_feature_is_point_in_time_on_the_six_shared_markets(six):
    assert_point_in_time(six, 25)


def test_every_panel_feature_is_point_in_time_on_the_real_minutes(minutes):
    assert_point_in_time(minutes, 25)


def test_the_online_window_gives_the_tables_value_on_the_six_shared_markets(six):
    assert_online(six, 12)


def test_the_online_window_gives_the_tables_value_on_the_real_minutes(minutes):
    assert_online(minutes, 12)


def test_features_that_need_data_the_shared_files_lack_are_nan_not_made_up(six):
    plain = make_panel([market_data(d.market, pd.DataFrame({"ts": pd.to_datetime(d.bars.ts, unit="ms", utc=True),
                                                             **{c: getattr(d.bars, c) for c in ("open", "high", "low", "close", "volume")}}))
                        for d in six.markets.values()], reference="BTC/USDT")
    table = compute_panel(plain, EVERY)
    empty = ["oi_chg_1h", "oi_chg_4h", "oi_chg_24h", "oi_turnover24", "ref_taker_imbalance", "ref_funding_rate",
             *(f for f in EVERY.features if f.startswith("flow"))]
    assert table[empty].isna().all().all()
    assert table[["ret24_1d_s1", "ref_ret1", "vol6_4h_s0"]].notna().mean().min() > 0.95


# A cross-pair feature built from a reference bar that closes after the target bar: the guard catches it.
@register_panel_feature("ref_close_by_open", reads_reference=True)
def _ref_close_by_open(m):
    "A LEAK on purpose: the return of the reference bar opening by this bar's close, which closes a bar after it."
    reference = reference_of(m)
    index = np.searchsorted(reference.b.ts, m.b.ts + m.b.bar_ms, side="right") - 1
    return take(reference.b.close / reference.b.open - 1, index)


def test_a_cross_pair_feature_reading_a_reference_bar_that_closes_later_is_caught_by_the_guard(tmp_path):
    universe = write_demo_panel(tmp_path, markets=3, days=40, seed=3)
    markets = [Market(universe.exchange, s, universe.timeframe) for s in universe.symbols]
    honest = PanelSet("honest", 1, ("ret1", "ref_ret1", "rel_ret1"))
    leaky = PanelSet("leaky", 1, ("ret1", "ref_ret1", "ref_close_by_open"))
    for fs in (honest, leaky):
        path = build_panel(markets, home=tmp_path, reference="SYNA/USDT", name=f"trio{fs.name}", panel_set=fs, progress=False)
        table, meta = read_feature_table(path)
        split = panel_split(table, val_days=10)
        if fs is honest:
            assert guard_panel(split, table, panel_table_asof(meta, tmp_path)).ok
            continue
        with pytest.raises(LeakageError) as caught:
            guard_panel(split, table, panel_table_asof(meta, tmp_path))
        late = [p for p in caught.value.report.problems if "is not point-in-time" in p]
        assert [p.split(":")[0] for p in late] == list(universe.symbols)
        assert all("feature 'ref_close_by_open' is not point-in-time" in p for p in late)
        with pytest.raises(LeakageError, match="ref_close_by_open"):   # tune builds the same check from the table itself
            tune(table, home=tmp_path, n_trials=2, val_days=10, progress=False)


def test_a_reference_with_missing_bars_gives_nan_there_and_nothing_else_changes():
    synth = synthetic_panel(markets=2, days=20, seed=4)
    whole = make_panel([market_data(Market("synthetic", s, "1h"), **p) for s, p in synth.items()], reference="SYNA/USDT")
    holey_bars = synth["SYNA/USDT"]["bars"].drop(index=range(100, 110))
    holey = make_panel([market_data(Market("synthetic", "SYNA/USDT", "1h"), holey_bars),
                        market_data(Market("synthetic", "SYNB/USDT", "1h"), **synth["SYNB/USDT"])], reference="SYNA/USDT")
    lead = PanelSet("lead", 1, ("ret1", "ref_ret1", "ref_ret_vol20"))
    a, b = (compute_panel(p, lead).query("market == 1").reset_index(drop=True) for p in (whole, holey))
    assert b.ref_ret1[100:110].isna().all() and b.ref_ret1[110:].notna().all() and a.ret1.equals(b.ret1)
    pd.testing.assert_series_equal(a.ref_ret1.drop(index=range(100, 111)), b.ref_ret1.drop(index=range(100, 111)))


def test_markets_with_different_bar_lengths_are_refused():
    hourly = synthetic_panel(markets=1, days=5)["SYNA/USDT"]["bars"]
    four_hourly = synthetic_panel(markets=1, days=5, timeframe="4h")["SYNA/USDT"]["bars"]
    with pytest.raises(ConfigError, match="mixes bar lengths"):
        make_panel([market_data(Market("x", "A/USDT", "1h"), hourly), market_data(Market("x", "B/USDT", "4h"), four_hourly)])
    table = pd.concat([compute_panel(make_panel([market_data(Market("x", "A/USDT", "1h"), hourly)]), PanelSet("r", 1, ("ret1",)), horizon=1),
                       compute_panel(make_panel([market_data(Market("x", "B/USDT", "4h"), four_hourly)]), PanelSet("r", 1, ("ret1",)),
                                     horizon=1).assign(market=1.0)])
    with pytest.raises(DataError, match="markets with different bar lengths in one panel"): check_panel(table)


def test_a_panel_market_without_stored_bars_is_named(tmp_path):
    universe = write_demo_panel(tmp_path, markets=2, days=5)
    markets = [Market("synthetic", s, "1h") for s in (*universe.symbols, "SYNZ/USDT")]
    with pytest.raises(DataError, match="no bars stored for synthetic SYNZ/USDT 1h"):
        build_panel(markets, home=tmp_path, reference="SYNA/USDT", name="three", progress=False)
