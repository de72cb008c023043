"""Serving by market: one process serves several markets' champions at once, a promotion in one market changes
only that market's answers, and the shadow's answers are logged off the hot path to a log that a killed server
leaves readable. Real runs (see `test_registry.world`), real threads, a real process killed with SIGKILL.
"""
import os, signal, subprocess, sys, threading, time
from dataclasses import replace

import numpy as np
import pytest

from cryptoml.core import Market
from cryptoml.infer import LGBMProd, read_shadow_log, shadow_log_path
from cryptoml.registry import Run, promote, save_run
from test_registry import GATE, MARKET, META, STRONG, table, tuned, world, write_table  # noqa: F401 (fixtures)

OTHER = Market("otherex", "BTC/USDT", "1m")
FAST = dict(n_boot=20)

@pytest.fixture
def two_markets(world, table, tuned):
    "The strong run champion of MARKET, a weak run champion of OTHER, and a strong one in OTHER to promote later."
    home, runs = world
    other_meta = {**META, "exchange": OTHER.exchange}
    write_table(home, table, other_meta)
    moved = {n: replace(tuned[n], table_meta={**tuned[n].table_meta, **other_meta}) for n in ("weak", "strong")}
    others = {n: save_run(r, home=home) for n, r in moved.items()}
    promote(runs["strong"], home=home, **GATE)
    promote(others["weak"], home=home, force=True, **FAST)
    return home, runs, others

def test_one_process_serves_several_markets(two_markets, tuned):
    home, runs, others = two_markets
    here, there = LGBMProd(MARKET, home=home), LGBMProd(OTHER, home=home)
    rows, weak_rows = (tuned["strong"].split.val[features].to_numpy()[:400] for features in (STRONG, ["noise", "ret1"]))
    expected = {"here": tuned["strong"].booster.predict(rows, num_threads=1), "there": tuned["weak"].booster.predict(weak_rows, num_threads=1)}
    answers, errors = {"here": [], "there": []}, []
    def ask(name, model, X):
        try: answers[name].append([model.predict_proba(x) for x in X])
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=ask, args=(n, m, X)) for _ in range(4) for n, m, X in (("here", here, rows), ("there", there, weak_rows))]
    for t in threads: t.start()
    for t in threads: t.join()
    assert errors == [] and (here.run_id, there.run_id) == (runs["strong"], others["weak"])
    for name in answers:
        for got in answers[name]: np.testing.assert_array_equal(got, expected[name])
    promote(others["strong"], home=home, force=True, **FAST)  # a new champion in OTHER only
    np.testing.assert_array_equal([here.predict_proba(x) for x in rows[:50]], expected["here"][:50])
    assert there.run_id == others["strong"] and there.features == STRONG and here.run_id == runs["strong"]

def test_logging_the_shadow_keeps_the_champions_single_row_latency_in_microseconds(two_markets):
    home, runs, _ = two_markets
    promote(runs["strong2"], home=home, alias="shadow")
    model = LGBMProd(MARKET, home=home)
    row = dict(zip(STRONG, [1.5, -0.3]))
    def median_us(calls=20_000):
        times = np.empty(calls)
        for i in range(calls):
            start = time.perf_counter_ns(); model.predict_proba(row); times[i] = time.perf_counter_ns() - start
        return float(np.median(times)) / 1000
    plain = median_us()
    model.log_shadow()
    try: logged = median_us()
    finally: model.log_shadow(False)
    print(f"LGBMProd single row, median: {plain:.1f} us; with the shadow logged: {logged:.1f} us; load {os.getloadavg()[0]:.2f}")
    assert logged < 100 and plain < 100, (plain, logged)
    lines = read_shadow_log(shadow_log_path(home, MARKET))
    assert len(lines) == 20_000 and set(lines.shadow) == {runs["strong2"]} and (lines.p == lines.p.iloc[0]).all()

SERVER = """
import sys, time
from cryptoml.core import Market
from cryptoml.infer import LGBMProd
model = LGBMProd(Market(*sys.argv[2:5]), home=sys.argv[1])
model.log_shadow()
model.shadow_log.every = 0.001  # write often, so the kill lands between and inside writes
row = {"signal": 1.5, "noise": -0.3}
model.predict_proba(row); model.shadow_log.flush()
print("serving", flush=True)
while True: model.predict_proba(row)
"""

def test_a_server_killed_mid_log_leaves_a_readable_shadow_log(two_markets):
    home, runs, _ = two_markets
    promote(runs["strong2"], home=home, alias="shadow")
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(home), *MARKET], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "serving"
    time.sleep(1.5)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    log = read_shadow_log(shadow_log_path(home, MARKET))
    assert len(log) > 100 and log.attrs["skipped"] <= 1, (len(log), log.attrs["skipped"])
    champion, shadow = (Run.open(runs[n], home) for n in ("strong", "strong2"))
    x = np.array(log.x.iloc[-1])[None, :]
    assert (log.champion == champion.id).all() and (log.shadow == shadow.id).all()
    assert log.p.iloc[-1] == champion.booster().predict(x, num_threads=1)[0]
    assert log.p_shadow.iloc[-1] == shadow.booster().predict(x, num_threads=1)[0]
