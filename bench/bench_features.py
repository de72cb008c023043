"""Feature build speed and memory: cryptoml's feature tables beside the reference technique, polars' lazy engine.

    python bench/bench_features.py                                   # 30 K bars, quick (CI runs 5 K)
    python bench/bench_features.py --sizes 1000000,10000000          # the issue's sizes

Bars are synthetic 1-minute bars (a 20 000-priced random walk with volume, taker-buy volume and 8-hourly funding),
already in memory as a pandas DataFrame. Each size runs in a fresh process, which times these steps in rounds,
interleaved (the order rotates each round), so a busy machine slows both sides alike; figures are medians:
  polars-seed    the reference technique, polars lazy: the seed set (close, ret1, sma20_gap, sma50_gap, vol_z) with
                 polars' rolling_mean and rolling_std, the labels (fwd_ret, y), streamed to Parquet by sink_parquet
                 with polars' defaults, then fsynced, as every file cryptoml writes is (polars-nosync: not fsynced);
  rich, seed     cryptoml's write_feature_table: that feature set and the labels, streamed to an lz4 Parquet file
                 and fsynced (what build_features does after reading the raw store);
  seed engine    the seed features in memory, no file: cryptoml's feature_matrix beside polars' collect(); this is
                 the rolling-window engine alone, the choice issue 16 asks about.
`ratio` is the project's rows/s over the reference's. `peak/raw` is the step's peak resident memory (Linux VmHWM,
reset before it) above the resident set just before it, plus the raw table, over the raw table: how many raw
tables' worth of memory the step held. CPU seconds count every thread of the process.

The profile then shows where the rich build's time goes, in CPU milliseconds per million rows: one more build runs
with a timer on each stage, in the thread the stage runs in: each registered feature (less the features it asks for,
such as the EMAs under MACD, which show under their own names), summed by family, the labels, the Arrow conversion,
and the Parquet encoding (the encoder thread; into /dev/null for this run). The file write and the fsync are wall
times of writing the finished file's bytes once more and of fsyncing them: the disk's share, which the build
overlaps with the rest (the writes and syncs run in threads of their own).
Targets (issue 16): rich build >= 0.5x the reference's rows/s, peak <= 1.5x the raw table. The target compares
rich-build with polars-seed, both writing durably (fsynced, timed); polars-nosync is shown beside it.
"""
import argparse, ctypes, gc, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
from typing import NamedTuple

LIBC = ctypes.CDLL("libc.so.6")  # glibc (Linux): the benchmark reads memory figures from /proc anyway


def synthetic_bars(n: int, seed: int = 0):
    "`n` synthetic 1-minute bars with taker-buy volume, and 8-hourly funding rates over their span."
    import numpy as np, pandas as pd
    rng = np.random.default_rng(seed)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 8e-4, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = np.abs(rng.normal(0, 4e-4, n)) * close
    volume = rng.exponential(8.0, n) * (rng.random(n) > 0.02)
    ts = pd.date_range("2005-01-01", periods=n, freq="1min", tz="UTC").as_unit("ms")
    bars = pd.DataFrame({"ts": ts, "open": open_, "high": np.maximum(open_, close) + wick, "low": np.minimum(open_, close) - wick,
                         "close": close, "volume": volume, "taker_buy_base": volume * rng.beta(5, 5, n)})
    stamps = pd.date_range(ts[0], ts[-1] + pd.Timedelta("1min"), freq="8h")
    funding = pd.DataFrame({"ts": stamps.as_unit("ms"), "funding_rate": rng.normal(1e-4, 5e-5, len(stamps))})
    return bars, funding


def polars_seed(bars):
    "The reference technique: the seed features and the labels as a polars lazy query on `bars`."
    import polars as pl
    c, v = pl.col("close"), pl.col("volume")
    std = v.rolling_std(20)
    return pl.from_pandas(bars).lazy().select(
        "ts", c, (c / c.shift(1) - 1).alias("ret1"), (c / c.rolling_mean(20) - 1).alias("sma20_gap"),
        (c / c.rolling_mean(50) - 1).alias("sma50_gap"), pl.when(std == 0).then(0.0).otherwise((v - v.rolling_mean(20)) / std).alias("vol_z"),
        (c.shift(-1) / c - 1).alias("fwd_ret"), (c.shift(-1) > c).cast(pl.Float64).alias("y"))


def resident_bytes(field: str) -> int:
    "A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"): return int(line.split()[1]) * 1024
    raise KeyError(field)


class Measure(NamedTuple):
    "One timed run of a step: wall and CPU seconds, and peak resident bytes above the resident set before it."
    wall: float
    cpu: float
    peak: int


def measured(step) -> Measure:
    "Run `step()` and measure it (bench_panel measures its steps with this too)."
    gc.collect()
    LIBC.malloc_trim(0)  # hands freed memory back, so the step's peak counts only what it needs anew
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = resident_bytes("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    result = step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resident_bytes("VmHWM") - before
    del result
    return Measure(wall, cpu, peak)


def steps(bars, funding, folder: Path) -> dict:
    "The timed steps, by name: (project, reference) pairs share a row of the table."
    from cryptoml.features import bar_arrays, feature_matrix, write_feature_table
    out, reference = folder/"project.parquet", folder/"reference.parquet"
    def synced(path: Path):
        with open(path, "rb") as f: os.fsync(f.fileno())
    return {"reference": lambda: (polars_seed(bars).sink_parquet(reference), synced(reference)),
            "reference, no fsync": lambda: polars_seed(bars).sink_parquet(reference),
            "rich": lambda: write_feature_table(out, bars, "rich", funding=funding),
            "seed": lambda: write_feature_table(out, bars, "seed", funding=funding),
            "engine reference": lambda: polars_seed(bars).collect(),
            "seed engine": lambda: feature_matrix(bar_arrays(bars, funding=funding), "seed")}


def profile(bars, funding, folder: Path) -> dict:
    "CPU seconds of each stage of one rich build: the build itself, with each stage timed in the thread it runs in."
    import dataclasses, threading, types, pyarrow.parquet as pq
    from cryptoml import features as F
    seconds, local = {}, threading.local()
    def timed(stage, fn):
        "`fn`, adding its thread's CPU time, less that of the timed calls inside it, to `stage`."
        def run(*args, **kwargs):
            nested = local.__dict__.setdefault("nested", [])  # each thread's own stack of timed calls
            t = time.thread_time()
            nested.append(0.0)
            try: return fn(*args, **kwargs)
            finally:
                spent, inner = time.thread_time() - t, nested.pop()
                seconds[stage] = seconds.get(stage, 0.0) + spent - inner
                if nested: nested[-1] += spent
        return run
    class Encoder(pq.ParquetWriter):
        "Encodes into /dev/null, so the stage is the CPU's work alone."
        def __init__(self, where, schema, **options): super().__init__("/dev/null", schema, **options)
    encode = timed("Parquet encode", Encoder.write_table)
    Encoder.write_table = lambda self, *a, **k: encode(self, *a, **k)
    arrow = types.SimpleNamespace(**vars(F.pa))  # pyarrow as the features module sees it, its `array` timed
    arrow.array = timed("Arrow conversion", F.pa.array)
    patched = {"FEATURES": {k: dataclasses.replace(f, fn=timed(k, f.fn)) for k, f in F.FEATURES.items()},
               "_labels_of": timed("labels", F._labels_of), "pa": arrow}
    saved = {k: getattr(F, k) for k in patched}
    try:
        vars(F).update(patched)
        F.pq.ParquetWriter = Encoder
        F.write_feature_table(folder/"profiled.parquet", bars, "rich", funding=funding)
    finally:
        vars(F).update(saved)
        F.pq.ParquetWriter = Encoder.__mro__[1]
    with open(folder/"project.parquet", "rb") as source, open(folder/"copy.parquet", "wb") as copy:
        spent = 0.0
        while piece := source.read(1 << 26):
            t0 = time.perf_counter()
            copy.write(piece)
            copy.flush()
            spent += time.perf_counter() - t0
        t0 = time.perf_counter()
        os.fsync(copy.fileno())
        seconds["file write"], seconds["fsync"] = spent, time.perf_counter() - t0  # wall times: waits for the disk
    return seconds


def child(n: int, rounds: int) -> dict:
    "Measure one size (runs in its own process)."
    bars, funding = synthetic_bars(n)
    raw = int(bars.memory_usage(index=True, deep=True).sum())
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        named = steps(bars, funding, Path(folder))
        names = list(named)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                runs.setdefault(name, []).append(measured(named[name]))
        file_mb = {}
        for name in ("seed", "rich"):  # each set's file, written once more outside the rounds; the rich one stays
            named[name]()
            file_mb[name] = (Path(folder)/"project.parquet").stat().st_size / 2**20
        stages = profile(bars, funding, Path(folder))
    median = {name: {k: statistics.median(getattr(m, k) for m in ms) for k in Measure._fields} for name, ms in runs.items()}
    return {"bars": n, "raw_mb": raw / 2**20, "rounds": rounds, "median": median, "raw": raw, "file_mb": file_mb,
            "profile_ms_per_m": {k: v * 1e3 / n * 1e6 for k, v in stages.items()}}


ROWS = (("rich", "reference", "rich-build", "polars-seed"), ("rich", "reference, no fsync", "rich-build", "polars-nosync"),
        ("seed", "reference", "seed-build", "polars-seed"), ("seed engine", "engine reference", "seed-compute", "polars-compute"))


def table_lines(r: dict) -> list[str]:
    "The table rows of one size: project, reference, their rows/s, ratio, peak/raw, CPU seconds and file size."
    n, m, lines = r["bars"], r["median"], []
    for project, reference, p_name, r_name in ROWS:
        p, ref = m[project], m[reference]
        mb = r["file_mb"].get(project)
        lines.append(f"{n:>10,} {p_name:>12} {r_name:>14} {n / p['wall'] / 1e6:>9.3g} {n / ref['wall'] / 1e6:>9.3g} "
                     f"{ref['wall'] / p['wall']:>6.2f} {(r['raw'] + p['peak']) / r['raw']:>8.2f} {(r['raw'] + ref['peak']) / r['raw']:>8.2f} "
                     f"{p['cpu']:>7.2f} {ref['cpu']:>7.2f} {'-' if mb is None else f'{mb:.1f}':>8}")
    return lines


HEADER = (f"{'bars':>10} {'project':>12} {'reference':>14} {'M rows/s':>9} {'ref M/s':>9} {'ratio':>6} {'peak/raw':>8} "
          f"{'ref p/r':>8} {'cpu s':>7} {'ref cpu':>7} {'file MB':>8}")


STAGES = ("labels", "Arrow conversion", "Parquet encode", "file write", "fsync")
FAMILIES = {"returns and range": ("close", "ret1", "hl_range"), "moving averages": ("sma20_gap", "sma50_gap"),
            "EMAs and MACD": ("ema12", "ema26", "ema_cross_gap", "macd", "macd_signal", "macd_hist"),
            "volatility": ("ret_vol20", "ret_vol60"), "lagged returns": tuple(f"ret_lag{k}" for k in range(1, 6)),
            "RSI": ("rsi14",), "calendar": ("hour_sin", "hour_cos", "dow_sin", "dow_cos"),
            "volume and takers": ("vol_z", "taker_imbalance"), "funding": ("funding_rate",)}


def grid(figures: dict) -> list[str]:
    "`name figure` pairs, three to a line."
    items = [f"{k:<24}{v:>8.1f}" for k, v in figures.items()]
    return ["  " + "   ".join(items[i:i + 3]) for i in range(0, len(items), 3)]


def profile_lines(r: dict) -> list[str]:
    "The profile of one size: each feature, the features by family, then the other stages."
    stages = r["profile_ms_per_m"]
    features = {k: v for k, v in stages.items() if k not in STAGES}
    family = {name: sum(features.get(f, 0.0) for f in members) for name, members in FAMILIES.items()}
    if other := sum(v for k, v in features.items() if not any(k in m for m in FAMILIES.values())):
        family["other features"] = other  # features registered since FAMILIES was written
    build = r["median"]["rich"]["wall"] * 1e3 / r["bars"] * 1e6
    lines = [f"where the rich build's time goes at {r['bars']:,} bars, CPU ms per M rows "
             f"(build wall: {build:.1f}, sum of stages: {sum(stages.values()):.1f}):", " each feature:", *grid(features),
             " the features by family:", *grid(family), " the other stages (file write and fsync: wall ms):",
             *grid({k: stages[k] for k in STAGES}),
             *grid({"all features": sum(features.values()), "file I/O (write, fsync)": stages["file write"] + stages["fsync"]})]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="30000", help="comma-separated bar counts (default 30000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per size; figures are medians (default 5)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), int(args.child[1]))))
        return
    print(f"$ python bench/bench_features.py --sizes {args.sizes} --rounds {args.rounds}")
    print(f"{os.cpu_count()} CPUs; medians of {args.rounds} interleaved rounds; ratio = project rows/s over reference rows/s")
    print("target (issue 16): rich-build >= 0.5x polars-seed, both fsynced; polars-nosync is the same query not fsynced")
    print(HEADER)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        load = os.getloadavg()
        done = subprocess.run([sys.executable, __file__, "--child", str(n), str(args.rounds)], capture_output=True, text=True)
        if done.returncode: sys.exit(done.stderr)
        results.append(json.loads(done.stdout.splitlines()[-1]))
        for line in table_lines(results[-1]): print(line, flush=True)
        print(f"{'':>10} load average before / after: {' '.join(f'{x:.2f}' for x in load)} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for r in results: print("\n".join(profile_lines(r)))


if __name__ == "__main__":
    main()
