"""LGBMProd under load and under faults.

Two real runs are tuned on the example market and saved through the registry. Sixteen threads then ask the
promoted model for predictions while a separate process promotes a new best fifty times; afterwards the
artifacts of a promoted run are damaged in every way a disk or a person can damage them, and the model that
was serving must keep serving.
"""
import shutil, subprocess, sys, threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cryptoml.core import ArtifactError, DataError
from cryptoml.ingest import example_market
from cryptoml.features import build_features, read_feature_table
from cryptoml.tune import tune
from cryptoml.registry import Run, promote, run_dir, save_run
from cryptoml.infer import LGBMProd, compile_run


@dataclass
class World:
    "A data root with two saved runs (A promoted), their validation rows and what each model answers for them."
    home: Path
    runs: list
    results: list
    rows: np.ndarray
    expected: list  # expected[k][i]: what run k serves for rows[i] (through its calibrator, if it has one)


def make_world(home: Path) -> World:
    "Tune two small runs on the example market, save both, promote the first."
    market = example_market(home)
    table_path = build_features(market, home=home, progress=False)
    table, _ = read_feature_table(table_path)
    results = [tune(table, home=home, n_trials=3, n_boot=20, val_days=days, seed=seed, progress=False) for seed, days in ((0, 1), (1, 2))]
    runs = [save_run(r, home=home, table_path=table_path) for r in results]
    for run in runs: compile_run(run_dir(run, home), home)  # ahead: no test copies the world while a run compiles
    promote(runs[0], home=home, force=True)
    rows = results[0].split.val[results[0].features].to_numpy()
    return World(home, runs, results, rows, [served(home, run, r.booster.predict(rows, num_threads=1)) for run, r in zip(runs, results)])


def served(home, run_id: str, raw: np.ndarray) -> np.ndarray:
    "What run `run_id` serves for the raw P(up) `raw`: through its calibrator (a float at a time, as one row is), if any."
    calibrator = Run.open(run_id, home).calibrator()
    return raw if calibrator is None else np.array([calibrator.apply(float(p)) for p in raw])


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("served"))


def copy_world(world: World, home: Path) -> World:
    "The same runs under a fresh data root (so a fresh LGBMProd singleton), run A promoted."
    shutil.copytree(world.home/"models", home/"models", symlinks=True)
    shutil.copytree(world.home/"feature_store", home/"feature_store")
    promote(world.runs[0], home=home, force=True)
    return World(home, world.runs, world.results, world.rows, world.expected)


PROMOTER = """
import sys
from cryptoml.registry import promote
home, runs = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
sys.stdin.readline()
for i in range(50): promote(runs[(i + 1) % 2], home=home, force=True, n_boot=20)
print("done", flush=True)
"""


class Tally:
    "What one thread saw: answers from run A, from run B, from neither; outside [0, 1]; switches between runs; errors."
    def __init__(self):
        self.a = self.b = self.neither = self.out_of_range = self.switches = 0
        self.errors, self.last = [], None

    def record(self, answers, i: int, expected: list):
        for k, p in enumerate(np.atleast_1d(answers)):
            row = (i + k) % len(expected[0])
            self.out_of_range += not 0.0 <= p <= 1.0
            same = lambda k: abs(p - expected[k][row]) <= 1e-12 * abs(p)  # a batch's calibrator may differ in the last bit
            run = "a" if same(0) else "b" if same(1) else None
            self.a, self.b, self.neither = self.a + (run == "a"), self.b + (run == "b"), self.neither + (run is None)
            self.switches += run is not None and self.last is not None and run != self.last
            self.last = run or self.last


def ask(model, form: str, world: World, i: int):
    "One call in the caller's `form`: a dict of features, a 1-D row, or a batch of 16 rows."
    n = len(world.rows)
    if form == "dict": return model.predict_proba(dict(zip(world.results[0].features, world.rows[i % n].tolist())))
    if form == "row": return model.predict_proba(world.rows[i % n])
    return model.predict_proba(np.take(world.rows, range(i, i + 16), axis=0, mode="wrap"))


def hammer(model, form, world, start, promoter_done, quota, tally):
    "Predict until `quota` answers are in and the promoter has finished."
    start.wait()
    i = 0
    while i < quota or not promoter_done.is_set():
        try: answers = ask(model, form, world, i)
        except Exception as e:
            tally.errors.append(repr(e))
            answers = [np.nan]
        else: tally.record(answers, i, world.expected)
        i += np.size(answers)


def test_sixteen_threads_keep_answering_while_another_process_promotes_fifty_times(world):
    differ = np.mean(world.expected[0] != world.expected[1])
    assert differ > 0.9, f"the two runs agree on {1 - differ:.0%} of rows: the test could not tell them apart"
    model = LGBMProd(home=world.home)
    promoter = subprocess.Popen([sys.executable, "-c", PROMOTER, str(world.home), *world.runs],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert promoter.stdout.readline().strip() == "ready"
    start, done = threading.Barrier(17), threading.Event()
    tallies = [Tally() for _ in range(16)]
    forms = ["dict", "row", "batch", "dict"] * 4
    threads = [threading.Thread(target=hammer, args=(model, forms[t], world, start, done, 10_000, tallies[t])) for t in range(16)]
    for t in threads: t.start()
    start.wait()
    promoter.stdin.write("go\n"); promoter.stdin.flush()
    out, _ = promoter.communicate(timeout=300)
    done.set()
    for t in threads: t.join(timeout=120)

    assert promoter.returncode == 0 and out.strip() == "done"
    assert [e for t in tallies for e in t.errors] == []
    assert all(t.a + t.b + t.neither >= 10_000 for t in tallies)
    assert sum(t.out_of_range for t in tallies) == 0
    assert sum(t.neither for t in tallies) == 0, "some answers came from neither run"
    assert sum(t.a for t in tallies) > 0 and sum(t.b for t in tallies) > 0
    assert sum(t.switches for t in tallies) >= 16, "the threads hardly saw the promotions"
    assert model.run_id == world.runs[0]  # the 50th promotion made run A the best again
    assert model.predict_proba(world.rows[7]) == world.expected[0][7]


def damage_flip(path: Path): data = bytearray(path.read_bytes()); data[len(data) // 2] ^= 0xFF; path.write_bytes(bytes(data))
def damage_truncate(path: Path): path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
def damage_delete(path: Path): path.unlink()

DAMAGES = {"tampered": damage_flip, "truncated": damage_truncate, "missing": damage_delete}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_new_best_is_refused_and_the_old_model_keeps_serving(world, tmp_path, damage):
    w = copy_world(world, tmp_path)
    model = LGBMProd(home=w.home)
    assert model.predict_proba(w.rows[0]) == w.expected[0][0]
    pkl = run_dir(w.runs[1], w.home)/"lgbm.pkl"
    good = pkl.read_bytes()
    promote(w.runs[1], home=w.home, force=True)
    DAMAGES[damage](pkl)

    answers = model.predict_proba(w.rows[:100])
    np.testing.assert_allclose(answers, w.expected[0][:100], rtol=1e-12, atol=0)
    assert model.run_id == w.runs[0]
    assert "lgbm.pkl" in model.last_refusal
    with pytest.raises(ArtifactError, match="lgbm.pkl"): model.refresh()
    assert model.predict_proba(dict(zip(model.features, w.rows[3].tolist()))) == w.expected[0][3]

    pkl.write_bytes(good)  # repaired: an explicit refresh picks run B up
    assert model.refresh() is True
    assert model.run_id == w.runs[1]
    np.testing.assert_allclose(model.predict_proba(w.rows[:100]), w.expected[1][:100], rtol=1e-12, atol=0)


def test_a_damaged_model_card_is_refused_too(world, tmp_path):
    w = copy_world(world, tmp_path)
    model = LGBMProd(home=w.home)
    model.predict_proba(w.rows[0])
    card = run_dir(w.runs[1], w.home)/"model_card.json"
    promote(w.runs[1], home=w.home, force=True)
    card.write_text(card.read_text()[:200])
    assert model.predict_proba(w.rows[1]) == w.expected[0][1]
    assert "model_card.json" in model.last_refusal


def test_nothing_is_served_from_a_damaged_first_load(world, tmp_path):
    w = copy_world(world, tmp_path)
    damage_truncate(run_dir(w.runs[0], w.home)/"lgbm.pkl")
    with pytest.raises(ArtifactError, match="lgbm.pkl"): LGBMProd(home=w.home).predict_proba(w.rows[0])


def test_no_promoted_model_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="best_lgbm.pkl"): LGBMProd(home=tmp_path).predict_proba(np.zeros(5))


def test_features_are_checked_by_name_and_order(world):
    model = LGBMProd(home=world.home)
    row = dict(zip(model.features, world.rows[0].tolist()))
    first, second = model.features[:2]
    swapped = {second: row[second], first: row[first], **{k: v for k, v in row.items() if k not in (first, second)}}
    with pytest.raises(DataError, match=f"misordered \\['{second}', '{first}'\\]"): model.predict_proba(swapped)
    with pytest.raises(DataError, match="missing"): model.predict_proba({k: v for k, v in row.items() if k != first})
    with pytest.raises(DataError, match="extra \\['hour'\\]"): model.predict_proba({**row, "hour": 1.0})
    with pytest.raises(DataError, match="shape"): model.predict_proba(world.rows[:3, :-1])


def test_sixteen_threads_asking_at_once_cause_one_load(world, tmp_path):
    w = copy_world(world, tmp_path)
    start, models = threading.Barrier(16), []
    def first_call():
        start.wait()
        models.append(LGBMProd(home=w.home).current())
    threads = [threading.Thread(target=first_call) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert len({id(m) for m in models}) == 1
