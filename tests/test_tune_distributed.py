"""Distributed tuning through a real PostgreSQL server: worker processes that fill one study with exactly the trials asked
for, a worker SIGKILLed mid-trial whose trial is marked failed and retried by the others, and a dozen workers on a server
whose max_connections is just what their pools need."""
import os, signal, subprocess, tempfile, threading, time, uuid
from collections import Counter, defaultdict

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cryptoml.tune import FINISHED, GRACE, HEARTBEAT
from tune_worker import REPO, result_of, seed_table, start_worker

PG = os.environ.get("CRYPTOML_TEST_PG")
pytestmark = pytest.mark.skipif(not PG, reason="CRYPTOML_TEST_PG is not set: start a throwaway server with "
                                "`eval \"$(tests/pg.sh start DIR)\"` (CI does)")

@pytest.fixture(scope="module")
def table_file(bars_csv, tmp_path_factory):
    "The shared BTC bars' seed feature table as a Parquet file the workers read."
    folder = tmp_path_factory.mktemp("dist")
    seed_table(folder/"home")[0].to_parquet(folder/"table.parquet")
    return folder/"table.parquet"

def new_database(server_url: str) -> str:
    "The URL of a new, empty database on the server at `server_url`."
    name, server = f"tune_{uuid.uuid4().hex[:8]}", sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT",
                                                                               poolclass=sqlalchemy.pool.NullPool)
    with server.connect() as db: db.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    return server.url.set(database=name).render_as_string(hide_password=False)

@pytest.fixture
def fresh_database():
    "A new, empty database on the test server (dropped afterwards): the workers race to create its tables."
    url = new_database(PG)
    yield url
    server = sqlalchemy.create_engine(PG, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with server.connect() as db: db.execute(sqlalchemy.text(f"DROP DATABASE {sqlalchemy.engine.make_url(url).database} WITH (FORCE)"))

def wait_for(condition, timeout=240.0, every=0.1):
    "Poll `condition` until it returns a truthy value."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition(): return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")

def trials_in(url: str, name: str) -> list:
    "The study's trials, read through a storage of its own that is closed afterwards."
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
    try: return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally: storage.engine.dispose()

def check_exactly(trials: list, n: int, *also_failed: int) -> Counter:
    "The study holds `n` finished trials, none running or waiting; only `also_failed` and trials that gave way failed."
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == n and states[TrialState.RUNNING] == states[TrialState.WAITING] == 0
    assert [t.number for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")] == list(also_failed)
    assert [t.number for t in trials] == list(range(len(trials)))
    return states

def test_two_workers_fill_one_study_with_exactly_the_requested_trials(table_file, fresh_database):
    name, n = "two-workers", 30
    start_at = time.time() + 10  # both open the study together, after their imports
    results = [result_of(w) for w in [start_worker(table_file, fresh_database, name, n, start_at) for _ in range(2)]]
    trials = trials_in(fresh_database, name)
    states = check_exactly(trials, n)
    print(f"\n2 workers x 2 threads: {n} finished trials, {states[TrialState.FAIL]} that gave way")
    ran = Counter(t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials if t.state in FINISHED)
    assert set(ran) == {str(r["pid"]) for r in results}  # both workers' trials are in the one study
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, t.number))
    assert all(r["n_trials"] == n and r["best_trial"] == best.number for r in results)  # each picked the study's one best trial

def test_a_worker_killed_mid_trial_has_its_trial_failed_and_retried(table_file, fresh_database):
    name, n = "killed", 24
    start_at = time.time() + 8
    workers = [start_worker(table_file, fresh_database, name, n, start_at, n_jobs=1) for _ in range(3)]
    victim = workers[0]

    def victims_trial():
        try: running = [t for t in trials_in(fresh_database, name) if t.state == TrialState.RUNNING]
        except KeyError: return None  # no study yet
        return next((t for t in running if t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and t.intermediate_values), None)

    def stopped_mid_fit():
        "Freeze the victim; its trial if it is mid-fit (past its first report), else None, the victim running on."
        stopped[0] = time.time()
        os.kill(victim.pid, signal.SIGSTOP)
        trial = None
        try: trial = victims_trial()
        finally:
            if trial is None: os.kill(victim.pid, signal.SIGCONT)
        return trial
    stopped = [0.0]
    wait_for(victims_trial)  # the study's tables exist: nothing the frozen victim holds can block a read
    doomed = wait_for(stopped_mid_fit)  # frozen, so the trial seen running is the one the kill interrupts
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = stopped[0]  # its last heartbeat came before it was frozen
    assert victim.wait() == -9
    results = [result_of(w) for w in workers[1:]]
    trials = trials_in(fresh_database, name)
    dead = trials[doomed.number]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == doomed.number]
    silent = dead.datetime_complete.timestamp() - killed_at
    print(f"\ntrial {dead.number} killed mid-fit (round {max(doomed.intermediate_values)}); marked failed {silent:.1f} s later, "
          f"retried as trial {retries[0].number} ({retries[0].state.name}) by worker {retries[0].user_attrs['worker']}")
    assert dead.state == TrialState.FAIL and GRACE - HEARTBEAT - 1 <= silent <= GRACE + 60
    assert len(retries) == 1 and retries[0].state in FINISHED and retries[0].params == dead.params
    assert retries[0].user_attrs["worker"].rsplit(":", 1)[1] in {str(r["pid"]) for r in results}
    check_exactly(trials, n, dead.number)
    assert all(r["n_trials"] == n for r in results)

@pytest.fixture
def small_server(request):
    "A PostgreSQL server of its own allowing `request.param` connections in all (the superuser's reserve included)."
    folder = tempfile.mkdtemp(prefix="cryptoml-pg-")
    started = subprocess.run(["sh", str(REPO/"tests"/"pg.sh"), "start", folder], stdout=subprocess.PIPE, text=True, check=True,
                             env={**os.environ, "PG_MAX_CONNECTIONS": str(request.param)})
    yield started.stdout.strip().split("=", 1)[1], request.param
    subprocess.run(["sh", str(REPO/"tests"/"pg.sh"), "stop", folder], check=True)

WORKERS, JOBS = 12, 2

@pytest.mark.parametrize("small_server", [WORKERS * (JOBS + 1) + 1], indirect=True)  # the pools' bound, and this test's watcher
def test_a_dozen_workers_stay_within_a_server_that_allows_few_connections(table_file, small_server):
    server, allowed = small_server
    url, name, n = new_database(server), "crowd", 36
    made = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})  # tables made up front
    made.engine.dispose()
    peaks, total, watching = defaultdict(int), [0], threading.Event()

    def watch():
        "Sample the server's connections per worker (each names itself in application_name) until the workers end."
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")  # a fresh view each time
        with engine.connect() as db:
            while not watching.is_set():
                names = Counter(r[0] for r in db.execute(sqlalchemy.text(
                    "SELECT application_name FROM pg_stat_activity WHERE backend_type = 'client backend'")))
                total[0] = max(total[0], sum(names.values()))
                for who, count in names.items(): peaks[who] = max(peaks[who], count)
                time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        start_at = time.time() + 15
        workers = [start_worker(table_file, url, name, n, start_at, n_jobs=JOBS) for _ in range(WORKERS)]
        results = [result_of(w, timeout=900) for w in workers]
    finally:
        watching.set()
        watcher.join()
    tuners = {who: count for who, count in peaks.items() if who.startswith("cryptoml-tune")}
    print(f"\n{WORKERS} workers x {JOBS} threads on a server allowing {allowed} connections: at most {max(tuners.values())} "
          f"per worker, {total[0]} in all (this test's watcher included)")
    assert len(tuners) == WORKERS and max(tuners.values()) <= JOBS + 1 and total[0] <= allowed
    check_exactly(trials_in(url, name), n)
    assert all(r["n_trials"] == n for r in results)
