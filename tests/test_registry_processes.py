"""Promotions under fire: readers loading the best model in a tight loop, two promoters at once, promoters killed
with SIGKILL. Readers and promoters are real processes (forked, so they start in milliseconds) sharing one data root.
"""
import multiprocessing as mp, os, random, signal, time
from collections import Counter
from dataclasses import asdict

from cryptoml.core import best_link, models_dir
from cryptoml.registry import best_history, best_run_id, load_booster, promote, read_card, read_promotions, rollback
from test_registry import table, tuned, world  # noqa: F401 (fixtures: the feature table, the fitted models, a data root with three runs)

fork = mp.get_context("fork")

def keep_loading_best(home, stop, results):
    "Resolve and load `best_lgbm.pkl` until `stop` is set; report (loads, targets seen, errors)."
    link, loads, seen, errors = best_link(home), 0, set(), []
    while not stop.is_set():
        try:
            seen.add(os.readlink(link))
            os.stat(link)  # follows the link: fails if it is missing or dangling
            load_booster(link)
            loads += 1
        except Exception as e: errors.append(f"{type(e).__name__}: {e}")
    results.put((loads, seen, errors))

def test_readers_never_see_a_missing_or_broken_link(world):
    home, runs = world
    promote(runs["weak"], home=home)
    stop, results = fork.Event(), fork.Queue()
    readers = [fork.Process(target=keep_loading_best, args=(home, stop, results)) for _ in range(2)]
    for r in readers: r.start()
    decisions = [promote(runs[("strong", "weak")[i % 2]], home=home, force=True) for i in range(200)]
    stop.set()
    reports = [results.get(timeout=60) for _ in readers]
    for r in readers: r.join()
    assert all(d.promoted for d in decisions) and len(read_promotions(home=home)) == 201
    for loads, seen, errors in reports:
        assert errors == [], errors[:3]
        assert loads > 20 and seen == {f"{runs[n]}/lgbm.pkl" for n in ("weak", "strong")}, (loads, seen)

def promote_when_released(barrier, home, run_id, results=None, force=False):
    "Wait at `barrier`, then promote `run_id`; report the decision to `results`, if given."
    barrier.wait()
    decision = promote(run_id, home=home, force=force)
    if results is not None: results.put(asdict(decision))

def test_two_promotions_at_once_take_turns(world):
    home, runs = world
    for _ in range(4):
        promote(runs["weak"], home=home, force=True)
        logged = len(read_promotions(home=home))
        barrier, results = fork.Barrier(2), fork.Queue()
        procs = [fork.Process(target=promote_when_released, args=(barrier, home, runs[n], results)) for n in ("strong", "strong2")]
        for p in procs: p.start()
        reported = {d["run_id"]: d for d in (results.get(timeout=60) for _ in procs)}
        for p in procs: p.join()
        first, second = read_promotions(home=home)[logged:]
        assert {first["run_id"], second["run_id"]} == {runs["strong"], runs["strong2"]} and reported[first["run_id"]] == first
        assert first["previous"] == runs["weak"] and first["promoted"], "the first to take the lock beats the weak run"
        assert second["previous"] == first["best"], "the second judged against the first one's result, not the stale best"
        assert best_run_id(home=home) == second["best"] == best_history(home=home)[-1]
        for d in (first, second): assert read_card(d["run_id"], home=home)["promotion"]["reason"] == d["reason"]

def forked_promotion_seconds(home, run_id) -> float:
    "How long a forked process takes to promote `run_id` (forced), from its release to its exit."
    barrier = fork.Barrier(2)
    proc = fork.Process(target=promote_when_released, args=(barrier, home, run_id), kwargs={"force": True})
    proc.start()
    barrier.wait()
    start = time.perf_counter()
    proc.join()
    assert proc.exitcode == 0
    return time.perf_counter() - start

def kill_a_promotion(home, run_id, after: float) -> bool:
    "Start promoting `run_id` (forced) in a forked process and SIGKILL it `after` seconds in; True if it died by the kill."
    barrier = fork.Barrier(2)
    proc = fork.Process(target=promote_when_released, args=(barrier, home, run_id), kwargs={"force": True})
    proc.start()
    barrier.wait()
    time.sleep(after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return proc.exitcode == -signal.SIGKILL

def test_a_promotion_killed_at_any_moment_leaves_the_old_best_or_the_new(world):
    home, runs = world
    promote(runs["weak"], home=home)
    took, rng, kills = forked_promotion_seconds(home, runs["strong"]), random.Random(0), Counter()
    while sum(kills.values()) < 30 or min(kills["moved"], kills["stayed"]) < 3:  # until kills landed on both sides of the swap
        assert sum(kills.values()) < 150, f"kills should land both before and after the link moves: {kills}"
        old = best_run_id(home=home)
        new = runs["weak"] if old == runs["strong"] else runs["strong"]
        killed = kill_a_promotion(home, new, rng.uniform(0, 0.9 * took))
        now = best_run_id(home=home)
        assert now in (old, new)
        load_booster(best_link(home))
        assert best_history(home=home)[-1] == now, "the history settles on the link even when the log line was lost"
        for run in runs.values(): read_card(run, home=home)
        if killed: kills["moved" if now == new else "stayed"] += 1
    history = best_history(home=home)
    assert rollback(home=home).best == history[-2] == best_run_id(home=home)
    assert [p.name for p in models_dir(home).iterdir() if p.name.endswith(".tmp")] == [], "the next lock holder sweeps what killed ones left"
