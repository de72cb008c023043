"""Helpers for the tuning tests, and a tuning worker process:
`python tests/tune_worker.py TABLE STORAGE STUDY N_TRIALS [START_AT] [N_JOBS]` tunes the feature table TABLE (Parquet)
into the study STUDY in STORAGE with N_JOBS trials at once (default: every core), starting at the epoch time START_AT
(so that workers start together), and prints the result as one JSON line."""
import json, os, subprocess, sys, time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]

def seed_table(home) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    "The example market's labelled seed feature table (its metadata in `attrs`, as `read_feature_table` leaves it), its bars and metadata."
    from cryptoml.ingest import example_market, read_bars
    from cryptoml.features import add_labels, compute_features
    market = example_market(home)
    bars = read_bars(home, market.exchange, market.symbol, market.timeframe)
    table = add_labels(compute_features(bars, "seed", timeframe=market.timeframe), bars)
    table.attrs["cryptoml"] = meta = {**market._asdict(), "feature_set": "seed", "horizon": 1}
    return table, bars, meta

def start_worker(table: Path, storage: str, study: str, n_trials: int, start_at: float = 0.0,
                 n_jobs: int | None = None) -> subprocess.Popen:
    "A worker process tuning the Parquet feature table `table` into `study`; its JSON result comes on stdout."
    jobs = [] if n_jobs is None else [str(n_jobs)]
    return subprocess.Popen([sys.executable, __file__, str(table), storage, study, str(n_trials), str(start_at), *jobs], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def result_of(worker: subprocess.Popen, timeout: float = 300) -> dict:
    "The JSON result a worker printed; its stderr in the error if it failed."
    out, err = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, f"worker {worker.pid} exited {worker.returncode}:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])

def main(table, storage, study, n_trials, start_at="0", n_jobs=None):
    from cryptoml.tune import tune
    rows = pd.read_parquet(table)
    time.sleep(max(0.0, float(start_at) - time.time()))
    # the study's storage is under test here, not the features: the point-in-time check is tests/test_tune.py's
    result = tune(rows, storage=storage, study_name=study, n_trials=int(n_trials), val_days=7, progress=False, n_boot=100, guard=False,
                  n_jobs=None if n_jobs is None else int(n_jobs))
    print(json.dumps({"pid": os.getpid(), "n_trials": result.n_trials, "best_trial": result.best_trial,
                      "params": result.params, "metrics": {k: v for k, v in result.metrics.items() if k != "ci95"}}))

if __name__ == "__main__": main(*sys.argv[1:])
