"""Markets, folds and pooled training on a real Dask LocalCluster (127.0.0.1, worker processes), with real faults.

The story: three markets' pipelines run as tasks on two workers while the test SIGKILLs, by PID, the worker holding
one market's task lock in the middle of its tuning; Dask runs that task again and the command still ends with every
market done once: one run saved and one decision of the gate per market, no half-written file, and the market
without bars failed alone, its error named. A walk-forward whose worker is killed after its first folds gives the
same predictions, fold for fold, as one run in this process. A pooled model trained data-parallel on a panel table
partitioned by market and month builds the same trees on every run, scores within `POOLED_TOLERANCE` of the one trained
in one process, is saved with a calibrator fitted on its held-back slice, and `LGBMProd` serves it; two such trainings
at once on one host (on one cluster, and on two) each build that same model, and so does one whose worker is SIGKILLed
in the middle of its LightGBM training (it trains again on the worker the nanny starts in its place).
"""
import json, os, signal, subprocess, threading, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptoml.core import Market, market_dir
from cryptoml.backtest import FIXED_PARAMS, walk_forward_predictions
from cryptoml.features import add_labels, compute_features
from cryptoml.infer import LGBMProd
from cryptoml.ingest import synthetic_market
from cryptoml.panel import build_panel, panel_market, panel_markets, write_demo_panel
from cryptoml.registry import Run, promote, read_promotions, save_run
from cryptoml.distributed import (POOLED_TOLERANCE, cluster_pool, connect, held_back_forecasts, parts_dir, pooled_result,
                                  pooled_scores, train_pooled, validation_rows, write_partitions, write_synthetic)

pytestmark = pytest.mark.timeout(600)
GOOD = ["AAA/USDT", "BBB/USDT", "CCC/USDT"]

def wait_for(what, timeout: float = 300, every: float = 0.05):
    "Poll `what()` until it returns something true; that value."
    deadline = time.monotonic() + timeout
    while not (found := what()):
        if time.monotonic() > deadline: raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(every)
    return found

def flock_holder(path: Path) -> int | None:
    "The PID holding an flock on `path`, from /proc/locks."
    st = path.stat()
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "FLOCK" and fields[5] == device: return int(fields[4])

def tuning_started(home: Path, market: Market) -> int | None:
    "The PID of the worker running `market`'s task once its claim says it began tuning and saving (and no run is recorded)."
    claims = list((home/"tasks").glob(f"*/{market.path_parts}.json"))
    if not claims: return None
    try: claim = json.loads(claims[0].read_text())
    except (OSError, ValueError): return None
    return "runs_before" in claim and "run_id" not in claim and flock_holder(market_dir(home, market)/".task.lock")

@pytest.fixture(scope="module")
def killed_pipeline(tmp_path_factory):
    "`cryptoml pipeline --stored --symbols ... --cluster local[2]` over three markets and one without bars; the worker tuning AAA killed."
    home = tmp_path_factory.mktemp("cluster")
    markets = [write_synthetic(Market("synthetic", s, "1m"), home, days=5) for s in GOOD]
    command = ["cryptoml", "pipeline", "--stored", "--exchange", "synthetic", "--symbols", ",".join([*GOOD, "NONE/USDT"]),
               "--timeframe", "1m", "--trials", "2", "--val-days", "1.5", "--cluster", "local[2]", "--home", str(home), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    victim = wait_for(lambda: proc.poll() is not None or tuning_started(home, markets[0]))
    assert victim is not True, f"the command ended before the kill: {proc.communicate()}"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    return home, markets, victim, proc.returncode, out, err

def test_a_killed_workers_market_is_done_once_and_a_market_without_bars_fails_alone(killed_pipeline):
    home, markets, victim, status, out, err = killed_pipeline
    assert not Path(f"/proc/{victim}").exists()  # the worker really died mid-task
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("synthetic ")}
    assert sorted(lines) == sorted([*GOOD, "NONE/USDT"]), out  # no market missing
    assert "failed" in lines["NONE/USDT"] and "DataError: no bars in" in lines["NONE/USDT"]
    assert "error: synthetic NONE/USDT 1m: DataError: no bars in" in err
    assert "4 markets in" in out and "1 failed" in out
    assert status == 2  # the worst failure's: bad input
    for market in markets:
        assert "failed" not in lines[market.symbol], out
        runs = [p for p in (market_dir(home, market)/"runs").iterdir()]
        assert len(runs) == 1 and (runs[0]/"model_card.json").is_file(), runs  # one run, whole; the killed attempt's is gone
        assert runs[0].name in lines[market.symbol]
        decisions = [d for d in read_promotions(home=home, market=market) if d["action"] == "promote"]
        assert [d["run_id"] for d in decisions] == [runs[0].name]  # the gate asked once
    assert not [p for p in home.rglob("*.tmp")], "half-written files left"
    assert not any((home/"tasks").iterdir())  # the command's claims are forgotten once it is done

def labelled(days: int) -> pd.DataFrame:
    "A synthetic market's seed feature table on 2-hour bars."
    bars = synthetic_market(days=days, seed=1, timeframe="2h")
    table = add_labels(compute_features(bars, "seed", timeframe="2h"), bars)
    table.attrs["cryptoml"] = {"exchange": "synthetic", "symbol": "SYNTH/USDT", "timeframe": "2h", "horizon": 1}
    return table

def test_a_walk_forward_whose_worker_dies_gives_every_fold_once_as_in_one_process(tmp_path):
    table = labelled(240)
    with connect(cluster="local[2]") as client:
        pids, killed = client.run(os.getpid), []
        def kill_a_busy_worker():
            wait_for(lambda: len(list((tmp_path/"folds").glob("fold-*.parquet"))) >= 2)
            busy = wait_for(lambda: [w for w, keys in client.processing().items() if keys and w in pids])
            killed.append(pids[busy[0]])
            os.kill(killed[0], signal.SIGKILL)
        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        on_cluster = walk_forward_predictions(table, retrain_days=10, min_rows=500, params=FIXED_PARAMS, pool=cluster_pool(client),
                                              progress=False, checkpoint=tmp_path)
        killer.join(timeout=5)
        assert killed and killed[0] not in client.run(os.getpid).values()  # the nanny started a new worker in its place
    inline = walk_forward_predictions(table, retrain_days=10, min_rows=500, params=FIXED_PARAMS, n_jobs=1, progress=False)
    pd.testing.assert_frame_equal(on_cluster.predictions, inline.predictions)
    assert on_cluster.folds.fold.tolist() == list(range(1, len(inline.folds) + 1))

CUTS = dict(val_days=30, stop_days=30)  # of the panel's hourly bars: validation last, the held-back slice before it

@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    "Six synthetic markets' panel table, partitioned by market and month, trained twice on two workers and once in this process."
    home = tmp_path_factory.mktemp("pooled")
    markets = panel_markets(write_demo_panel(home, markets=6, days=480))
    path = build_panel(markets, home=home, reference=markets[0].symbol, name="pool", progress=False)
    with connect(cluster="local[2]") as client:
        write_partitions(path, client, progress=False)
        on_workers, again = (train_pooled(parts_dir(path), client, threshold=0, **CUTS) for _ in range(2))
    in_process = train_pooled(parts_dir(path), **CUTS)
    return home, markets, path, on_workers, again, in_process

def test_the_pooled_model_on_the_cluster_is_deterministic_and_scores_as_the_one_trained_in_one_process(pooled):
    _, _, _, on_workers, again, in_process = pooled
    assert (on_workers.trained_on, in_process.trained_on) == ("Dask, 2 workers", "one process")
    assert on_workers.train_rows == in_process.train_rows > 50_000
    assert again.booster.model_to_string() == on_workers.booster.model_to_string()  # the same trees, byte for byte
    rows = validation_rows(on_workers)
    cluster, local = pooled_scores(on_workers, rows), pooled_scores(in_process, rows)
    assert abs(cluster["log_loss"] - local["log_loss"]) < POOLED_TOLERANCE, (cluster, local)
    assert cluster["log_loss"] < np.log(2)  # it learned something: below the coin's log loss

def test_the_pooled_model_is_saved_calibrated_as_a_run_and_served_by_lgbmprod_unchanged(pooled):
    home, markets, path, on_workers, _, _ = pooled
    run_id = save_run(pooled_result(on_workers, n_boot=100), home=home, table_path=path,
                      calibration=held_back_forecasts(on_workers), n_boot=100)
    promote(run_id, home=home, force=True, min_rows=100)
    served, rows = LGBMProd(panel_market("pool", markets), home=home), validation_rows(on_workers)
    assert served.run_id == run_id
    run = Run.open(run_id, home)
    calibration, calibrator = run.card["calibration"], run.calibrator()
    assert calibration["rows"] > 0 and calibration["source"].startswith("backtest predictions")
    assert calibration["served"] == (calibrator is not None)
    raw = on_workers.booster.predict(rows[on_workers.features])
    np.testing.assert_allclose(served.predict_proba(rows[on_workers.features]), raw if calibrator is None else calibrator.many(raw))

def test_two_trainings_at_once_on_one_host_each_build_the_model_one_builds_alone(pooled):
    _, _, path, on_workers, _, _ = pooled
    built = {}
    def train(name, client):
        try: built[name] = train_pooled(parts_dir(path), client, threshold=0, **CUTS).booster.model_to_string()
        except Exception as e: built[name] = e
    with connect(cluster="local[2]") as first, connect(cluster="local[2]") as second:
        runs = [threading.Thread(target=train, args=(name, client)) for name, client in
                (("first cluster", first), ("first cluster, at the same time", first), ("second cluster", second))]
        for run in runs: run.start()
        for run in runs: run.join(timeout=500)
    assert len(built) == 3, built
    differ = {name: text if isinstance(text, Exception) else "another model" for name, text in built.items()
              if text != on_workers.booster.model_to_string()}
    assert not differ, differ

def test_a_pooled_training_whose_worker_is_killed_mid_training_trains_again_and_builds_the_same_model(pooled):
    _, _, path, on_workers, _, _ = pooled
    with connect(cluster="local[2]") as client:
        pids, killed = client.run(os.getpid), []
        def kill_a_rank():
            ranks = lambda: [w for w, keys in client.processing().items() if any("_train_rank" in k for k in keys)]
            busy = wait_for(ranks, every=0.02)
            time.sleep(0.3)  # into LightGBM's rounds
            killed.append(pids[busy[0]])
            os.kill(killed[0], signal.SIGKILL)
        killer = threading.Thread(target=kill_a_rank, daemon=True)
        killer.start()
        model = train_pooled(parts_dir(path), client, threshold=0, **CUTS)
        killer.join(timeout=5)
        assert killed and killed[0] not in client.run(os.getpid).values()  # the rank's worker died; a new one stands in
    assert not Path(f"/proc/{killed[0]}").exists()
    assert model.trained_on == "Dask, 2 workers"
    assert model.booster.model_to_string() == on_workers.booster.model_to_string()  # complete: the same trees
