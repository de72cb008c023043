"Distributed tuning: two worker processes add trials to one Optuna study through a real PostgreSQL server."
import os, time, uuid
from collections import Counter

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cryptoml.tune import FINISHED
from tune_worker import result_of, seed_table, start_worker

PG = os.environ.get("CRYPTOML_TEST_PG")
pytestmark = pytest.mark.skipif(not PG, reason="CRYPTOML_TEST_PG is not set: start a throwaway server with "
                                "`eval \"$(tests/pg.sh start DIR)\"` (CI does)")

@pytest.fixture(scope="module")
def table_file(bars_csv, tmp_path_factory):
    "The shared BTC bars' seed feature table as a Parquet file the workers read."
    folder = tmp_path_factory.mktemp("dist")
    seed_table(folder/"home")[0].to_parquet(folder/"table.parquet")
    return folder/"table.parquet"

@pytest.fixture
def fresh_database():
    "The URL of a new, empty database on the test server (dropped afterwards): the workers race to create its tables."
    name, server = f"tune_{uuid.uuid4().hex[:8]}", sqlalchemy.create_engine(PG, isolation_level="AUTOCOMMIT")
    with server.connect() as db: db.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield server.url.set(database=name).render_as_string(hide_password=False)
    with server.connect() as db: db.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    server.dispose()

def test_two_workers_fill_one_study_without_losing_a_trial(table_file, fresh_database):
    name, n = "two-workers", 30
    start_at = time.time() + 10  # both open the study together, after their imports
    results = [result_of(w) for w in [start_worker(table_file, fresh_database, name, n, start_at) for _ in range(2)]]
    study = optuna.load_study(study_name=name, storage=fresh_database)
    trials = study.get_trials()
    assert all(t.state in FINISHED for t in trials)  # none lost: no trial failed or was left running
    assert [t.number for t in trials] == list(range(len(trials)))
    assert n <= len(trials) <= n + 1  # each worker stops at n finished trials; finishing together overshoots by one at most
    ran = Counter(t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials)
    assert set(ran) == {str(r["pid"]) for r in results}  # both workers' trials are in the one study
    best = study.best_trial
    assert best.value == min(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert best.number in [r["best_trial"] for r in results]  # the last worker to finish picked the study's one best trial
    assert all(r["n_trials"] >= n for r in results)
