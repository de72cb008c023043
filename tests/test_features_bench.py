"""The feature benchmark runs end to end at a small size, so CI keeps it working (the lead runs the full sizes), and
once at 1 M bars, where the streamed rich build must hold no more than 1.5 raw tables' worth of memory (issue 16)."""
import subprocess, sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]/"bench"/"bench_features.py"
STAGES = ("labels", "Arrow conversion", "Parquet encode", "file write", "fsync", "file I/O (write, fsync)", "all features")
FAMILIES = ("returns and range", "moving averages", "EMAs and MACD", "volatility", "lagged returns", "RSI", "calendar",
            "volume and takers", "funding")


def bench(*args: str) -> tuple[dict[tuple[str, str], list[str]], str]:
    "Run the benchmark with `args`: its table rows by (project, reference) (bars, names and 9 figures), and its output."
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"$ python bench/bench_features.py {' '.join(args)}"
    rows = [fields for fields in map(str.split, lines[3:]) if len(fields) == 11 and fields[0][0].isdigit()]
    return {(r[1], r[2]): r for r in rows}, done.stdout


def test_the_benchmark_prints_project_reference_and_ratio_and_the_profile():
    rows, out = bench("--sizes", "5000", "--rounds", "2")
    assert list(rows) == [("rich-build", "polars-seed"), ("rich-build", "polars-nosync"), ("seed-build", "polars-seed"),
                          ("seed-compute", "polars-compute")]
    for r in rows.values():
        rates, peaks, cpu = [float(x) for x in r[3:6]], [float(x) for x in r[6:8]], [float(x) for x in r[8:10]]
        assert r[0] == "5,000" and min(rates) > 0 and min(peaks) >= 1 and min(cpu) >= 0, r
    assert float(rows["rich-build", "polars-seed"][10]) > float(rows["seed-build", "polars-seed"][10]) > 0
    assert "load average before / after" in out and "where the rich build's time goes at 5,000 bars" in out
    for stage in ("rsi14", "funding_rate", *STAGES, *FAMILIES): assert f"  {stage} " in out, stage
    assert "target (issue 16): rich-build >= 0.5x polars-seed, both fsynced" in out


def test_building_the_rich_set_for_a_million_bars_holds_at_most_one_and_a_half_raw_tables():
    rows, _ = bench("--sizes", "1000000", "--rounds", "3")  # the median of 3: one build's peak varies by +-0.15
    row = rows["rich-build", "polars-seed"]
    assert 1 <= float(row[6]) <= 1.5, row
