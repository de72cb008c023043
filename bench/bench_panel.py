"""Panel feature build speed and memory: many markets' cross-pair, multi-timeframe, open-interest and order-flow features.

    python bench/bench_panel.py                          # 20 markets x 1 year of 1h bars (175 K rows), the issue's size
    python bench/bench_panel.py --markets 6 --days 90    # quicker

The panel is `cryptoml.panel.synthetic_panel` (bars with taker buys, 8-hourly funding, hourly open interest), one
reference market (the first). The features are the `panel` set's own (`bench` below): hourly lagged returns, the
default expansion (ret/vol/gap/flow/range x periods 6, 24 x 1h, 4h, 1d x shifts 0, 1), the reference's return,
volatility, volume z-score, taker imbalance and funding rate as of each bar's close, the return over the reference's,
and open-interest change and turnover: 76 features a row. Each step runs in a fresh subprocess on a panel already in
memory, and measures:

  compute    cryptoml.panel: every market's feature matrix, a whole market at a time, in memory;
  build      cryptoml.panel.write_panel_table as it is by default: the same features, with labels, streamed to an lz4
             Parquet file by the feature store's writer (`write_row_groups`), in runs of at most `PANEL_ROWS` bars of
             a market (`market_chunks`: two runs of 4,380 bars a market here, each with the history its first row
             needs), a row group a run: the caller computes each run's features (into one of two buffers in turn)
             and makes its Arrow table with its labels, a thread encodes it into the file while the caller computes
             the next, so two runs' rows are in memory at a time, and a third thread has the disk keep up; fsynced
             once more at the end, then renamed into place (durable, atomic);
  one thread the same build with `encode_ahead=False`: the caller makes and encodes each run's table itself;
  no fsync   the default build with os.fsync made a no-op in that process: what the durable sync costs;
  reference  a straightforward pandas implementation of the same features (groupby, rolling, resample, merge_asof),
             producing the whole table in memory; its values are checked against ours (largest relative difference);
  real six   the default build on real data: the six shared Binance perpetuals (../shared/data, 1h bars of 2021-2022,
             105,120 rows), imported with `cryptoml.ingest.import_many` and read back, BTC the reference. Those files
             carry bars only, so the taker-flow, funding and open-interest features are NaN there (as they would be
             from any feed without them). Skipped, saying so, on a machine without the shared data.

rows/s from wall seconds (CPU seconds beside them, every thread's: this machine is shared), the best of `--repeat`
runs. Peak memory is the process's peak resident set during the step (Linux VmHWM, reset before it) above its
resident set before it, plus the raw panel (bars, funding and open interest frames): `peak / raw` is how many raw
panels' worth of memory the step held, the largest over the runs, after a warm-up run on a tiny panel (so that
libraries loading and their memory pools growing once per process are not counted as the panel's).
Targets (issue 14): >= 1 M rows/s and peak <= 2x the raw panel. Each build also prints its calling thread's own CPU
seconds: the part the other threads cannot take over, so rows over it bound the build's speed on any number of cores;
and rows over half of all its threads' CPU seconds: the bound on two cores that nothing else uses.

The profile then runs the build's phases one after another in one process (the build overlaps them in threads):
every run's features; the labels and the zero-copy Arrow tables; the Parquet encoding into memory, under the settings
compared (the feature store's zstd with byte-stream split, zstd without it, Arrow's dictionary default, lz4 with all
statistics, with data pages v1, with nullable columns holding null for NaN (the tables before), as now, uncompressed);
the file write into the page cache; its fsync; the rename and the folder's fsync. Features stay float64: the tables'
contract (DESIGN.md) and their content digests are float64, so float32 is shown but not used.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

from bench_features import measured   # the same clock and peak-memory reading as the feature store's benchmark

TARGET = (1e6, 2.0)


def bench_set():
    from cryptoml.panel import CROSS, LAGS, MTF, OPEN_INTEREST_FEATURES, PanelSet, expand
    return PanelSet("bench", 1, (*expand(LAGS), *expand(MTF), *CROSS, "rel_ret1", *OPEN_INTEREST_FEATURES))


SIX = [f"binance_perp_{coin}USDT_1h_2021-2022.csv" for coin in ("BTC", "ETH", "SOL", "BNB", "DOGE", "LINK")]


def shared_six(home: Path):
    "The six shared perpetuals as frames (symbol -> bars) and as a cryptoml Panel, BTC the reference; None without them."
    from cryptoml.core import shared_data
    from cryptoml.ingest import import_many, read_bars
    from cryptoml.panel import make_panel, market_data
    paths = [shared_data(name) for name in SIX]
    if None in paths: return None
    report = import_many(paths, "binance", home=home, progress=False)
    frames = {m.symbol: {"bars": read_bars(home, *m)} for m in report.reports}
    return frames, make_panel([market_data(m, frames[m.symbol]["bars"]) for m in report.reports], reference="BTC/USDT")


def synthetic(markets: int, days: float):
    "The synthetic panel as frames (symbol -> bars, funding, open interest) and as a cryptoml Panel."
    from cryptoml.core import Market
    from cryptoml.panel import make_panel, market_data, synthetic_panel
    frames = synthetic_panel(markets, days, seed=0)
    panel = make_panel([market_data(Market("synthetic", s, "1h"), **f) for s, f in frames.items()], reference=next(iter(frames)))
    return frames, panel


# ---- the reference: pandas, the way one would write it first ----------------------------------------------------------
def pandas_features(frames: dict, reference: str):
    import numpy as np, pandas as pd
    hour, spell = pd.Timedelta("1h"), {"1h": "1h", "4h": "4h", "1d": "1D"}   # pandas spells a day 1D

    def own(bars, funding):
        "The single-market pieces the cross-pair features read: return, 20-bar volatility, volume z-score, taker imbalance, funding."
        f = pd.DataFrame({"close_time": (bars.ts + hour).astype("datetime64[ms, UTC]")})
        f["ret1"] = bars.close.pct_change().to_numpy()
        f["ret_vol20"] = f.ret1.rolling(20).std().to_numpy()
        mean, std = bars.volume.rolling(20).mean(), bars.volume.rolling(20).std()
        f["vol_z"] = ((bars.volume - mean) / std).where(std != 0, 0.0).to_numpy()
        f["taker_imbalance"] = np.where(bars.volume == 0, 0.0, 2 * bars.taker_buy_base / bars.volume - 1)
        rates = funding.rename(columns={"ts": "close_time"}).astype({"close_time": "datetime64[ms, UTC]"})
        f["funding_rate"] = pd.merge_asof(f[["close_time"]], rates, on="close_time", tolerance=pd.Timedelta("1D")).funding_rate.to_numpy()
        return f

    def higher(bars, tf):
        "Bars of `tf` from the base bars (first one dropped when partial), indicators over them, indexed by close time."
        tf = spell[tf]
        h = bars.set_index("ts").resample(tf).agg({"high": "max", "low": "min", "close": "last", "volume": "sum", "taker_buy_base": "sum"})
        h.loc[h.close.isna(), ["volume", "taker_buy_base"]] = np.nan
        if bars.ts.iloc[0] != h.index[0]: h.iloc[0] = np.nan
        out = pd.DataFrame(index=h.index + pd.Timedelta(tf))
        for p in (6, 24):
            out[f"ret{p}"] = (h.close / h.close.shift(p) - 1).to_numpy()
            out[f"vol{p}"] = (h.close / h.close.shift(1) - 1).rolling(p).std().to_numpy()
            out[f"gap{p}"] = (h.close / h.close.rolling(p).mean() - 1).to_numpy()
            volume = h.volume.rolling(p).sum()
            out[f"flow{p}"] = ((2 * h.taker_buy_base.rolling(p).sum() - volume) / volume).where(volume != 0, 0.0).to_numpy()
            out[f"range{p}"] = ((h.high - h.low) / h.close).rolling(p).mean().to_numpy()
        return out

    ref = own(frames[reference]["bars"], frames[reference]["funding"]).set_index("close_time")
    tables = []
    for code, (symbol, f) in enumerate(frames.items()):
        bars = f["bars"]
        t = pd.DataFrame({"market": float(code), "ts": bars.ts})
        mine = own(bars, f["funding"])
        for k in (1, 2, 3, 5, 11, 23): t[f"ret1_1h_s{k}"] = mine.ret1.shift(k).to_numpy()
        for tf in ("1h", "4h", "1d"):
            h = higher(bars, tf)
            seen = (bars.ts + hour).dt.floor(spell[tf])   # the latest closed bar of tf, by its close time
            for s in (0, 1):
                at = h.reindex(seen - s * pd.Timedelta(spell[tf]))
                for name in h.columns:
                    t[f"{name}_{tf}_s{s}"] = at[name].to_numpy()
        for name in ("ret1", "ret_vol20", "vol_z", "taker_imbalance", "funding_rate"):
            t[f"ref_{name}"] = ref[name].reindex(mine.close_time).to_numpy()
        t["rel_ret1"] = mine.ret1.to_numpy() - t.ref_ret1.to_numpy()
        oi = f["open_interest"][["ts", "open_interest"]].astype({"ts": "datetime64[ms, UTC]"})
        at = lambda times: pd.merge_asof(pd.DataFrame({"ts": times.astype("datetime64[ms, UTC]")}), oi, on="ts",
                                         tolerance=pd.Timedelta("3h")).open_interest.to_numpy()
        now = at(mine.close_time)
        for span in ("1h", "4h", "24h"): t[f"oi_chg_{span}"] = np.log(now / at(mine.close_time - pd.Timedelta(span)))
        t["oi_turnover24"] = bars.volume.rolling(24).sum().to_numpy() / now
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


# ---- one measured step in its own process -----------------------------------------------------------------------------------
def clocked(fn, repeat: int = 2) -> tuple[float, float]:
    "(wall, CPU) seconds of `fn()`, the best of `repeat` calls."
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    return best


def profile(panel, fs, folder: Path) -> dict:
    "The build's phases one after another: (wall, CPU) seconds of each, and each encoding's (wall, CPU, MB)."
    import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
    from cryptoml.core import fsync_dir
    from cryptoml.features import PARQUET_OPTIONS
    from cryptoml.panel import PANEL_PARQUET, _run_table, market_chunks, market_contexts, market_matrix, write_panel_table
    schema = pq.read_schema(write_panel_table(folder/"schema.parquet", panel, fs))
    runs = lambda: ((code, m, start, end, market_matrix(c, fs, len(c) - end + start))
                    for code, _, m in market_contexts(panel) for start, end, c in market_chunks(m, fs))
    rows = lambda: (_run_table(code, m, start, end, features, schema, 1, None) for code, m, start, end, features in runs())
    out = {"features": clocked(lambda: [features.shape for *_, features in runs()])}
    with_rows = clocked(lambda: [t.num_rows for t in rows()])   # a table at a time, as the build holds them
    out["labels + Arrow tables"] = tuple(a - b for a, b in zip(with_rows, out["features"]))
    tables = list(rows())
    nullable = pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)
    with_nulls = [pa.Table.from_arrays([pc.if_else(pc.is_nan(c), None, c) if c.type == pa.float64() else c
                                        for c in t.columns], schema=nullable) for t in tables]
    single = pa.schema([f.with_type(pa.float32()) if f.type == pa.float64() else f for f in schema])
    as_float32 = [pa.Table.from_arrays([pc.cast(c, f.type) for c, f in zip(t.columns, single)], schema=single)
                  for t in tables]

    def encode(where, options, tables=tables):
        with pq.ParquetWriter(where, tables[0].schema, **options) as writer:
            for t in tables: writer.write_table(t, row_group_size=len(t))
    zstd_plain = {**PARQUET_OPTIONS, "use_byte_stream_split": False}
    settings = {"zstd -1, byte-stream split (feature store)": (PARQUET_OPTIONS, tables),
                "zstd -1, no split": (zstd_plain, tables),
                "zstd -1, dictionary (Arrow's default)": ({**zstd_plain, "use_dictionary": True}, tables),
                "lz4, all statistics": ({**PANEL_PARQUET, "write_statistics": True}, tables),
                "lz4, data pages v1": ({**PANEL_PARQUET, "data_page_version": "1.0"}, tables),
                "lz4, nullable columns, null for NaN (before)": (PANEL_PARQUET, with_nulls),
                "lz4, pages v2, stats of market, ts, NaN (now)": (PANEL_PARQUET, tables),
                "uncompressed": ({**PANEL_PARQUET, "compression": "none"}, tables),
                "lz4, features float32 (not used: tables are float64)": (PANEL_PARQUET, as_float32)}
    encodings = {}
    for name, (options, which) in settings.items():   # into a stream that only counts the bytes: the CPU's work alone
        sink = [None]
        def counted():
            sink[0] = pa.MockOutputStream()
            encode(sink[0], options, which)
        encodings[name] = (*clocked(counted), sink[0].size() / 2**20)
    out["Parquet encoding"] = encodings["lz4, pages v2, stats of market, ts, NaN (now)"][:2]
    data = pa.BufferOutputStream()
    encode(data, PANEL_PARQUET)
    path, moved, data = folder/"profiled.parquet", folder/"renamed.parquet", data.getvalue()
    out["file write (page cache)"] = clocked(lambda: path.write_bytes(data), 1)
    def sync():
        with open(path, "rb") as f: os.fsync(f.fileno())
    out["fsync of the file"] = clocked(sync, 1)
    out["rename + folder fsync"] = clocked(lambda: (os.replace(path, moved), fsync_dir(folder)), 1)
    return {"phases": out, "encodings": encodings, "file_mb": moved.stat().st_size / 2**20}


def child(step: str, markets: int, days: float, repeat: int) -> dict:
    import numpy as np
    from cryptoml.panel import market_contexts, market_matrix, write_panel_table, compute_panel
    if step == "no fsync": os.fsync = lambda fd: None   # this process only: the build without its durable sync
    ahead = step != "one thread"   # the default build encodes ahead
    fs, callers = bench_set(), []
    with tempfile.TemporaryDirectory() as folder:
        def run(frames, panel):
            if step == "compute": return sum(market_matrix(m, fs).shape[1] for _, _, m in market_contexts(panel))
            if step == "reference": return pandas_features(frames, panel.reference)
            caller = time.thread_time()
            written = write_panel_table(Path(folder)/"panel.parquet", panel, fs, encode_ahead=ahead)
            callers.append(time.thread_time() - caller)   # the calling thread's own CPU: the build's serial part
            return written
        run(*synthetic(2, 3))   # warm-up on a tiny panel: libraries load and their pools grow once per process, not per panel
        if step == "real six":
            if (six := shared_six(Path(folder)/"home")) is None: return {"step": step, "skipped": True}
            frames, panel = six
        else: frames, panel = synthetic(markets, days)
        raw = sum(int(f.memory_usage(index=True, deep=True).sum()) for series in frames.values() for f in series.values())
        rows = sum(len(f["bars"]) for f in frames.values())
        out = {"step": step, "rows": rows, "raw_mb": raw / 2**20, "features": len(fs.features)}
        runs = [measured(lambda: run(frames, panel)) for _ in range(repeat)]
        wall, cpu, _ = min(runs)
        out |= {"s": wall, "cpu_s": cpu, "rows_s": rows / wall, "peak_x_raw": (raw + max(r[2] for r in runs)) / raw,
                "caller_cpu_s": min(callers[-repeat:], default=None)}
        if step == "build":
            out["file_mb"] = (Path(folder)/"panel.parquet").stat().st_size / 2**20
            out["profile"] = profile(panel, fs, Path(folder))
        if step == "reference":   # the same values as ours?
            ours = compute_panel(panel, fs)
            theirs = run(frames, panel)[list(ours.columns)]
            a, b = ours[list(fs.features)].to_numpy(), theirs[list(fs.features)].to_numpy()
            both = ~(np.isnan(a) | np.isnan(b))
            out["nan_mismatch"] = int((np.isnan(a) != np.isnan(b)).sum())
            out["max_rel_diff"] = float(np.max(np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), 1e-12)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=20)
    parser.add_argument("--days", type=float, default=365)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; the fastest is reported (default 3)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, markets, days, repeat = args.child
        print(json.dumps(child(step, int(markets), float(days), int(repeat))))
        return
    print(f"$ python bench/bench_panel.py --markets {args.markets} --days {args.days:g} --repeat {args.repeat}")
    print(f"{os.cpu_count()} CPUs, load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = {}
    for step in ("compute", "build", "one thread", "no fsync", "reference", "real six"):
        done = subprocess.run([sys.executable, __file__, "--child", step, str(args.markets), str(args.days), str(args.repeat)],
                              capture_output=True, text=True, check=True)
        results[step] = r = json.loads(done.stdout.splitlines()[-1])
    real = results.pop("real six")
    r = results["compute"]
    print(f"{r['rows']:,} rows ({args.markets} markets x {args.days:g} days of 1h bars), {r['features']} features a row; "
          f"raw panel {r['raw_mb']:.1f} MB")
    print(f"{'step':>10} {'wall s':>8} {'cpu s':>7} {'M rows/s':>9} {'M rows/cpu s':>13} {'peak/raw':>9} "
          f"{'target (>=1 M rows/s, <=2x)':>29}")
    for step, r in results.items():
        verdict = "" if step == "reference" else "; ".join(
            f"{what} {'meets' if ok else 'MISSES'}" for what, ok in (("speed", r["rows_s"] >= TARGET[0]),
                                                                     ("memory", r["peak_x_raw"] <= TARGET[1])))
        print(f"{step:>10} {r['s']:>8.3f} {r['cpu_s']:>7.3f} {r['rows_s'] / 1e6:>9.3f} {r['rows'] / r['cpu_s'] / 1e6:>13.3f} "
              f"{r['peak_x_raw']:>9.2f} {verdict:>29}")
    if real.get("skipped"): print("  real six: skipped, the shared six-market data is not on this machine (../shared/data)")
    else:
        print(f"  real six {real['s']:>8.3f} {real['cpu_s']:>7.3f} {real['rows_s'] / 1e6:>9.3f} "
              f"{real['rows'] / real['cpu_s'] / 1e6:>13.3f} {real['peak_x_raw']:>9.2f}    "
              f"(the default build of the six shared perpetuals: {real['rows']:,} rows, raw {real['raw_mb']:.1f} MB)")
    for step in ("build", "one thread", "no fsync"):
        r = results[step]
        print(f"{step:>10}: the calling thread's CPU {r['caller_cpu_s']:.3f} s of {r['cpu_s']:.3f} s "
              f"(alone it allows {r['rows'] / r['caller_cpu_s'] / 1e6:.2f} M rows/s; "
              f"all of it, shared evenly by two idle cores, {2 * r['rows'] / r['cpu_s'] / 1e6:.2f})")
    ref, build = results["reference"], results["build"]
    print(f"ratio (reference wall / ours): compute {ref['s'] / results['compute']['s']:.1f}x, build {ref['s'] / build['s']:.1f}x, "
          f"encoding in one thread {ref['s'] / results['one thread']['s']:.1f}x, "
          f"build without fsync {ref['s'] / results['no fsync']['s']:.1f}x; file {build['file_mb']:.1f} MB")
    print(f"reference values vs ours: largest relative difference {ref['max_rel_diff']:.2e}, "
          f"NaN where the other is not: {ref['nan_mismatch']}")
    prof = build["profile"]
    print(f"where the build's time goes, its phases one after another (best of {args.repeat}; the build overlaps them):")
    for phase, (wall, cpu) in prof["phases"].items():
        print(f"  {phase:<34} wall {wall:>6.3f} s  cpu {cpu:>6.3f} s")
    print(f"  {'sum':<34} wall {sum(w for w, _ in prof['phases'].values()):>6.3f} s  "
          f"cpu {sum(c for _, c in prof['phases'].values()):>6.3f} s")
    print("Parquet encoding of the same Arrow tables, by setting (no dictionary unless said; bytes counted, not kept):")
    for name, (wall, cpu, mb) in prof["encodings"].items():
        print(f"  {name:<52} wall {wall:>6.3f} s  cpu {cpu:>6.3f} s  {mb:>6.1f} MB")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
