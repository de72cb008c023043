"""The panel benchmark runs end to end at a small size, so CI keeps it working (the lead runs the issue's size), and its
pandas reference agrees with the panel's features: the same values (to float rounding) and NaN in the same places."""
import re, subprocess, sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]/"bench"/"bench_panel.py"


def test_the_benchmark_prints_every_step_the_ratio_and_the_profile_and_agrees_with_pandas():
    done = subprocess.run([sys.executable, str(BENCH), "--markets", "3", "--days", "40", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.splitlines()[0] == "$ python bench/bench_panel.py --markets 3 --days 40 --repeat 1"
    assert "2,880 rows (3 markets x 40 days of 1h bars), 76 features a row" in out
    for step in ("compute", "build", "one thread", "no fsync", "reference"):
        row = re.search(rf"^ *{step} +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)", out, re.M)
        assert row and min(map(float, row.groups())) > 0, step
    real = re.search(r"^  real six +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) .*: 105,120 rows", out, re.M)
    assert real or "real six: skipped, the shared six-market data is not on this machine" in out, out
    assert real is None or min(map(float, real.groups())) > 0
    assert re.search(r"ratio \(reference wall / ours\): compute [\d.]+x, build [\d.]+x", out)
    agreement = re.search(r"largest relative difference ([\d.e+-]+), NaN where the other is not: (\d+)", out)
    assert agreement and float(agreement[1]) < 1e-6 and agreement[2] == "0", out
    phases = ("features", "labels + Arrow tables", "Parquet encoding", "file write (page cache)", "fsync of the file")
    for phase in phases:
        assert f"  {phase} " in out, phase
