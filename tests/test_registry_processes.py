"""Promotions under fire: readers loading the champion in a tight loop, two promoters at once in one market and in
two markets, promoters killed with SIGKILL. Readers and promoters are real processes (forked, so they start in
milliseconds) sharing one data root.
"""
import multiprocessing as mp, os, random, signal, time
from collections import Counter
from dataclasses import asdict, replace

from cryptoml.core import Market, best_link, inside, market_dir
from cryptoml.registry import Run, best_history, best_run_id, promote, promotion_lock, read_promotions, rollback, save_run
from test_registry import GATE, MARKET, META, table, tuned, world, write_table  # noqa: F401 (fixtures: the table, the fits, a data root with three runs)

fork = mp.get_context("fork")
FAST = dict(n_boot=20)  # forced promotions still run the gate, for the log; a small bootstrap keeps them quick

def load_champion(home, market=MARKET):
    "Resolve the champion link and load its run as serving does: checked inside models/, card and artifacts verified."
    link = best_link(home, market)
    folder = inside(link.parent/os.readlink(link), home/"models").parent
    run = Run.at(folder, home)
    run.verify()
    return run.booster()

def keep_loading_best(home, stop, results):
    "Resolve and load the champion until `stop` is set; report (loads, targets seen, errors)."
    link, loads, seen, errors = best_link(home, MARKET), 0, set(), []
    while not stop.is_set():
        try:
            seen.add(os.readlink(link))
            os.stat(link)  # follows the link: fails if it is missing or dangling
            load_champion(home)
            loads += 1
        except Exception as e: errors.append(f"{type(e).__name__}: {e}")
    results.put((loads, seen, errors))

def test_readers_never_see_a_missing_or_broken_link(world):
    home, runs = world
    promote(runs["weak"], home=home, force=True, **FAST)
    stop, results = fork.Event(), fork.Queue()
    readers = [fork.Process(target=keep_loading_best, args=(home, stop, results)) for _ in range(2)]
    for r in readers: r.start()
    decisions = [promote(runs[("strong", "weak")[i % 2]], home=home, force=True, **FAST) for i in range(100)]
    stop.set()
    reports = [results.get(timeout=60) for _ in readers]
    for r in readers: r.join()
    assert all(d.promoted for d in decisions) and len(read_promotions(home=home, market=MARKET)) == 101
    for loads, seen, errors in reports:
        assert errors == [], errors[:3]
        assert loads > 20 and seen == {f"runs/{runs[n]}/lgbm.pkl" for n in ("weak", "strong")}, (loads, seen)

def promote_when_released(barrier, home, run_id, results=None, force=False):
    "Wait at `barrier`, then promote `run_id`; report the decision to `results`, if given."
    barrier.wait()
    decision = promote(run_id, home=home, force=force, **GATE)
    if results is not None: results.put(asdict(decision))

def test_two_promotions_at_once_take_turns(world):
    home, runs = world
    for _ in range(3):
        promote(runs["weak"], home=home, force=True, **FAST)
        logged = len(read_promotions(home=home, market=MARKET))
        barrier, results = fork.Barrier(2), fork.Queue()
        procs = [fork.Process(target=promote_when_released, args=(barrier, home, runs[n], results)) for n in ("strong", "strong2")]
        for p in procs: p.start()
        reported = {d["run_id"]: d for d in (results.get(timeout=120) for _ in procs)}
        for p in procs: p.join()
        first, second = read_promotions(home=home, market=MARKET)[logged:]
        assert {first["run_id"], second["run_id"]} == {runs["strong"], runs["strong2"]} and reported[first["run_id"]] == first
        assert first["previous"] == runs["weak"] and first["promoted"], "the first to take the lock beats the weak run"
        assert second["previous"] == first["best"], "the second judged against the first one's result, not the stale champion"
        assert best_run_id(home=home, market=MARKET) == second["best"] == best_history(home=home, market=MARKET)[-1]
        for d in (first, second):
            card = Run.open(d["run_id"], home).card["promotion"]
            assert card["reason"] == d["reason"] or d["previous"] == d["run_id"]

OTHER = Market("otherex", "BTC/USDT", "1m")

def two_markets(home, table, tuned) -> dict:
    "Two runs in each of two markets, on the same table: {market: [run ids]}."
    other_meta = {**META, "exchange": OTHER.exchange}
    write_table(home, table, other_meta)
    moved = {name: replace(r, table_meta={**r.table_meta, **other_meta}) for name, r in tuned.items()}
    return {MARKET: [save_run(tuned[n], home=home) for n in ("weak", "strong")],
            OTHER: [save_run(moved[n], home=home) for n in ("weak", "strong")]}

def hold_the_lock(home, market, held, seconds):
    "Take `market`'s promotion lock, say so, and keep it `seconds`."
    with promotion_lock(home, market):
        held.set()
        time.sleep(seconds)

def test_a_promotion_in_one_market_never_waits_for_another_markets_lock(world, table, tuned):
    home, _ = world
    runs = two_markets(home, table, tuned)
    held = fork.Event()
    holder = fork.Process(target=hold_the_lock, args=(home, MARKET, held, 6))
    holder.start()
    assert held.wait(30)
    start = time.perf_counter()
    assert promote(runs[OTHER][1], home=home, force=True, **FAST).promoted
    elsewhere = time.perf_counter() - start
    barrier = fork.Barrier(2)
    same = fork.Process(target=promote_when_released, args=(barrier, home, runs[MARKET][1]), kwargs={"force": True})
    same.start(); barrier.wait()
    start = time.perf_counter()
    same.join()
    waited = time.perf_counter() - start
    holder.join()
    assert elsewhere < 3, f"a promotion in {OTHER} waited {elsewhere:.1f} s on {MARKET}'s lock"
    assert waited > 2, f"a promotion in {MARKET} did not wait for its own market's lock ({waited:.1f} s)"
    assert best_run_id(home=home, market=MARKET) == runs[MARKET][1]

def promote_in_turns(home, run_ids, times, results):
    "Force each of `run_ids` in turn as its market's champion, `times` times; report the decisions' run ids."
    results.put([promote(run_ids[i % len(run_ids)], home=home, force=True, **FAST).run_id for i in range(times)])

def test_promotions_in_two_markets_at_once_keep_two_consistent_champions(world, table, tuned):
    home, _ = world
    runs = two_markets(home, table, tuned)
    results = fork.Queue()
    procs = [fork.Process(target=promote_in_turns, args=(home, runs[m], 25, results)) for m in (MARKET, OTHER)]
    for p in procs: p.start()
    done = [results.get(timeout=300) for _ in procs]
    for p in procs: p.join()
    assert all(len(d) == 25 for d in done)
    for market in (MARKET, OTHER):
        log = read_promotions(home=home, market=market)
        assert len(log) == 25 and {d["run_id"] for d in log} == set(runs[market]) and {d["market"] for d in log} == {str(market)}
        assert best_run_id(home=home, market=market) == log[-1]["best"] == best_history(home=home, market=market)[-1]
        load_champion(home, market)
        assert [p.name for p in market_dir(home, market).iterdir() if p.name.endswith(".tmp")] == []

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

def test_a_promotion_killed_at_any_moment_leaves_the_old_champion_or_the_new(world):
    home, runs = world
    promote(runs["weak"], home=home, force=True, **FAST)
    took, rng, kills = forked_promotion_seconds(home, runs["strong"]), random.Random(0), Counter()
    while sum(kills.values()) < 30 or min(kills["moved"], kills["stayed"]) < 3:  # until kills landed on both sides of the swap
        assert sum(kills.values()) < 150, f"kills should land both before and after the link moves: {kills}"
        old = best_run_id(home=home, market=MARKET)
        new = runs["weak"] if old == runs["strong"] else runs["strong"]
        killed = kill_a_promotion(home, new, rng.uniform(0, 0.9 * took))
        now = best_run_id(home=home, market=MARKET)
        assert now in (old, new)
        load_champion(home)
        assert best_history(home=home, market=MARKET)[-1] == now, "the history settles on the link even when the log line was lost"
        for run in runs.values(): Run.open(run, home)
        if killed: kills["moved" if now == new else "stayed"] += 1
    history = best_history(home=home, market=MARKET)
    assert rollback(home=home, market=MARKET).best == history[-2] == best_run_id(home=home, market=MARKET)
    assert [p.name for p in market_dir(home, MARKET).iterdir() if p.name.endswith(".tmp")] == [], "the next lock holder sweeps what killed ones left"
