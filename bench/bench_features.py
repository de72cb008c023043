"""Feature store speed and memory: rows/s and peak memory of the seed and the full ("rich") feature set.

    python bench/bench_features.py                                     # 30 K bars, quick (CI)
    python bench/bench_features.py --sizes 30000,1000000,10000000      # the issue's sizes

Bars are synthetic 1-minute bars (a 20 000-priced random walk with volume, taker-buy volume and 8-hourly funding).
Each size and set runs in a fresh subprocess, which measures two things on bars already in memory:
  compute  compute_features: the feature table as a DataFrame in memory. Its peak includes the table itself: the rich
           set's 25 float64 columns are about 3.6 raw tables (7 columns), so it cannot stay under 3x;
  build    write_feature_table: features and labels streamed to a zstd Parquet file (what build_features does after
           reading the raw store), one row group written while the next is computed; `file MB` is its size.
Wall seconds give the rows/s; CPU seconds show how much of the wall time was this process's own work on a shared
machine. Peak memory is the process's peak resident set during the step (Linux VmHWM, reset before it) above its resident
set just before it, plus the raw table: `peak / raw` is then how many raw tables' worth of memory the step held.
Targets (issue 4): seed >= 5 M rows/s at 10 M bars, full >= 1 M rows/s, peak <= 3x the raw table (the build).
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path


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


def resident_bytes(field: str) -> int:
    "A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"): return int(line.split()[1]) * 1024
    raise KeyError(field)


def measured(step):
    "Run `step()`; (wall seconds, CPU seconds, peak resident bytes above the resident set before it)."
    import gc
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = resident_bytes("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    result = step()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resident_bytes("VmHWM") - before
    del result
    return seconds, cpu, peak


def child(n: int, feature_set: str, repeat: int) -> dict:
    "Measure one size and set (runs in its own process)."
    from cryptoml.features import compute_features, write_feature_table
    bars, funding = synthetic_bars(n)
    raw = int(bars.memory_usage(index=True, deep=True).sum())
    with tempfile.TemporaryDirectory() as folder:
        runs = {"compute": lambda: compute_features(bars, feature_set, funding=funding),
                "build": lambda: write_feature_table(Path(folder)/"t.parquet", bars, feature_set, funding=funding)}
        out = {"bars": n, "set": feature_set, "raw_mb": raw / 2**20}
        for name, step in runs.items():
            seconds, cpu, peak = min(measured(step) for _ in range(repeat))
            out |= {f"{name}_s": seconds, f"{name}_cpu_s": cpu, f"{name}_mrows_s": n / seconds / 1e6, f"{name}_peak_x_raw": (raw + peak) / raw}
        out["file_mb"] = (Path(folder)/"t.parquet").stat().st_size / 2**20
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="30000", help="comma-separated bar counts (default 30000)")
    parser.add_argument("--sets", default="seed,rich", help="comma-separated feature sets (default seed,rich)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], int(args.child[2]))))
        return
    print(f"$ python bench/bench_features.py --sizes {args.sizes} --sets {args.sets}")
    print(f"{os.cpu_count()} CPUs, load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (f"{'bars':>10} {'set':>5} {'raw MB':>8} {'compute s':>9} {'cpu s':>7} {'M rows/s':>8} {'peak/raw':>8} "
              f"{'build s':>8} {'cpu s':>7} {'M rows/s':>8} {'peak/raw':>8} {'file MB':>8}")
    print(header)
    for n in (int(s) for s in args.sizes.split(",")):
        for feature_set in args.sets.split(","):
            repeat = 3 if n <= 100_000 else 1
            done = subprocess.run([sys.executable, __file__, "--child", str(n), feature_set, str(repeat)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.splitlines()[-1])
            print(f"{n:>10,} {feature_set:>5} {r['raw_mb']:>8.1f} {r['compute_s']:>9.3f} {r['compute_cpu_s']:>7.3f} {r['compute_mrows_s']:>8.2f} "
                  f"{r['compute_peak_x_raw']:>8.2f} {r['build_s']:>8.3f} {r['build_cpu_s']:>7.3f} {r['build_mrows_s']:>8.2f} "
                  f"{r['build_peak_x_raw']:>8.2f} {r['file_mb']:>8.1f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
