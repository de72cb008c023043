"""A backtest killed with SIGKILL in the middle of its folds, and run again.

The story: `cryptoml backtest` runs on two worker processes; once it has stored a few folds it is killed
with SIGKILL (no handler runs). Nothing in its folder looks like a finished report, no worker process
outlives it, and the same command run again resumes from the stored folds and ends with exactly the report
and predictions an uninterrupted run gives.
"""
import json, os, signal, subprocess, time
from pathlib import Path

import pandas as pd

from test_cli import cryptoml

SYNTH = ["--exchange", "synthetic", "--symbol", "SYNTH/USDT", "--timeframe", "1m"]
RUN = ["backtest", *SYNTH, "--retrain-days", 0.25, "--min-val-rows", 500, "--boot", 100, "--trials", 3, "--jobs", 2]


def demo_market(home: Path):
    "Four days of the demo market and its feature table in `home`."
    for command in (["demo", "--days", 4], ["features", *SYNTH, "--funding-exchange", "synthetic"]):
        assert cryptoml(*command, home=home).returncode == 0


def descendants(pid: int) -> set[int]:
    "Every process started by `pid`, and by those, from /proc."
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = {int(c) for c in (task/"children").read_text().split()} if (task/"children").exists() else set()
            todo += sorted(children - found)
            found |= children
    return found


def alive(pid: int) -> bool:
    "Whether `pid` is still running (not gone, not a zombie)."
    try: return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError: return False


def test_a_killed_backtest_leaves_no_report_and_its_rerun_resumes(tmp_path):
    killed, clean = tmp_path/"killed", tmp_path/"clean"
    for home in (killed, clean): demo_market(home)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("CRYPTOML_HOME", None)
    process = subprocess.Popen(["cryptoml", *map(str, RUN), "--home", str(killed), "--quiet"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    stored = lambda: list(killed.glob("backtests/synthetic/SYNTHUSDT/1m/*/folds/fold-*.parquet"))
    deadline = time.monotonic() + 300
    while len(stored()) < 3 and process.poll() is None and time.monotonic() < deadline: time.sleep(0.05)
    workers = descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and workers
    folder = stored()[0].parent.parent
    assert not (folder/"backtest.json").exists() and not (folder/"predictions.parquet").exists()
    assert 3 <= len(stored()) < 16
    gone_by = time.monotonic() + 30
    while any(alive(w) for w in workers) and time.monotonic() < gone_by: time.sleep(0.1)
    assert not any(alive(w) for w in workers), "a worker outlived the killed backtest"

    resumed, fresh = cryptoml(*RUN, home=killed), cryptoml(*RUN, home=clean)
    assert resumed.returncode == 0 and fresh.returncode == 0, resumed.stderr + fresh.stderr
    docs = [json.loads(next(home.glob("backtests/*/*/*/*/backtest.json")).read_text()) for home in (killed, clean)]
    assert docs[0]["id"] == docs[1]["id"] and docs[0]["resumed_folds"] >= 3 and docs[1]["resumed_folds"] == 0
    assert docs[0]["report"] == docs[1]["report"] and docs[0]["trading"] == docs[1]["trading"]
    assert docs[0]["summary"] == docs[1]["summary"]
    predictions = [pd.read_parquet(next(home.glob("backtests/*/*/*/*/predictions.parquet"))) for home in (killed, clean)]
    pd.testing.assert_frame_equal(*predictions)
    assert not list(killed.glob("backtests/**/.*.tmp"))
