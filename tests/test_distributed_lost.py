"""A pooled training whose lost worker does not come back stops, naming the workers, instead of training on fewer.

The story: a cluster of two workers on 127.0.0.1, one started by a LocalCluster's nanny and one without a nanny (a
`dask worker --no-nanny` process), trains a pooled model on a small panel table. The test SIGKILLs, by PID, the worker
without a nanny in the middle of its LightGBM training, so nothing brings it back. Within the short `worker_timeout`
the training stops with `WorkerLost` saying that 1 of the 2 workers it started on is back; it returns no model to save
(fewer ranks would deal other rows to each and build another model than an undisturbed training) and writes nothing.
"""
import os, signal, subprocess, sys, threading, time

import pytest

from cryptoml.panel import build_panel, panel_markets, write_demo_panel
from cryptoml.distributed import WORKER_ENV, WorkerLost, connect, parts_dir, train_pooled, write_partitions
from test_distributed import wait_for

pytestmark = pytest.mark.timeout(300)

def test_a_pooled_training_whose_lost_worker_is_not_back_in_time_stops_and_names_the_workers(tmp_path):
    markets = panel_markets(write_demo_panel(tmp_path, markets=3, days=120))
    path = build_panel(markets, home=tmp_path, reference=markets[0].symbol, name="pool", progress=False)
    folder = write_partitions(path, progress=False)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    with connect(cluster="local[1]") as client:
        lone = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", client.scheduler.address,
                                 "--no-nanny", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                                env={**os.environ, **WORKER_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(2, timeout=120)
            assert lone.pid in client.run(os.getpid).values()
            def kill_the_lone_worker():
                wait_for(lambda: any("_train_rank" in k for keys in client.processing().values() for k in keys),
                         every=0.02)
                os.kill(lone.pid, signal.SIGKILL)
            killer = threading.Thread(target=kill_the_lone_worker, daemon=True)
            killer.start()
            started = time.monotonic()
            # patience as long as the rounds: the training would go on for stages after the kill
            with pytest.raises(WorkerLost, match=r"^1 of the 2 workers this pooled training started on are back 5 s"):
                train_pooled(folder, client, threshold=0, val_days=15, stop_days=15, patience=2000, max_rounds=2000,
                             chunk=50, worker_timeout=5)
            assert time.monotonic() - started < 60  # a short wait, not the default minute's
            killer.join(timeout=5)
            assert lone.wait(timeout=5) == -signal.SIGKILL  # the worker without a nanny really died mid-training
            assert len(client.scheduler_info()["workers"]) == 1  # its nanny restarted the other one
        finally:
            lone.kill()
            lone.wait()
    assert parts_dir(path) == folder
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == written  # no model, run or half-written file
