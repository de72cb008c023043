"""The feature-store benchmark runs end to end at a small size, so CI keeps it working (the lead runs the full sizes),
and once at 1 M bars of the full set, where the streamed build must hold no more than three raw tables' worth of memory."""
import subprocess, sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]/"bench"/"bench_features.py"


def bench_rows(*args: str) -> list[list[str]]:
    "Run the benchmark with `args`; the rows of its table (bars, set and 10 figures), split into fields."
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"$ python bench/bench_features.py {' '.join(args)}"
    return [fields for fields in map(str.split, lines[3:-1]) if len(fields) == 12]


def test_the_benchmark_prints_its_table_for_each_set():
    rows = bench_rows("--sizes", "5000", "--sets", "seed,rich")
    assert [r[:2] for r in rows] == [["5,000", "seed"], ["5,000", "rich"]]
    for r in rows:
        figures = [float(x) for x in r[2:]]
        assert all(x > 0 for x in figures), r


def test_building_the_full_set_for_a_million_bars_holds_at_most_three_raw_tables():
    (row,) = bench_rows("--sizes", "1000000", "--sets", "rich")
    build_peak_x_raw = float(row[-2])
    assert row[:2] == ["1,000,000", "rich"] and 1 <= build_peak_x_raw <= 3, row
