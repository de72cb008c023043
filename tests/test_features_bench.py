"""The feature-store benchmark runs end to end at a small size, so CI keeps it working (the lead runs the full sizes)."""
import subprocess, sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]/"bench"/"bench_features.py"


def test_the_benchmark_prints_its_table_for_each_set():
    done = subprocess.run([sys.executable, str(BENCH), "--sizes", "5000"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "$ python bench/bench_features.py --sizes 5000 --sets seed,rich"
    rows = [line.split() for line in lines if line.lstrip().startswith("5,000")]
    assert [r[1] for r in rows] == ["seed", "rich"]
    for r in rows:
        figures = [float(x) for x in r[2:]]
        assert len(figures) == 9 and all(x > 0 for x in figures), r
