"""Compiled models and the lean serving import (issue 16), each beside its reference technique in the same run.

A 136-tree model is trained on the example market (the shared BTC/USDT bars, or the synthetic market on a fresh
clone), saved as a run and promoted. Then, in interleaved rounds:

- batch scoring of --batch-rows rows: `LGBMProd.predict_proba` on LightGBM's C API and on the run's compiled model
  (2 threads each), against lleaves (LLVM-compiled) with 2 jobs;
- single-row latency (p50/p95 over --calls calls): `LGBMProd.predict_proba` of a feature dict (compiled), against
  LightGBM's raw C API (`LGBM_BoosterPredictForMatSingleRowFast`, `FastBooster.predict_row`) and a tl2cgen-compiled
  library's `predict` called directly through ctypes;
- compile time, one compile of each per round: ours (`cryptoml.infer.compile_model`: the model's C at -O1 beside the
  shared kernel at -O3, which a process compiles once: timed both as a first compile and with the kernel compiled),
  against tl2cgen (gcc, `export_lib`); lleaves (LLVM) once;
- import time: `from cryptoml.infer import LGBMProd` against `import lightgbm, numpy, pandas`, each in a fresh
  interpreter, --imports times, median.

    PYTHONPATH=/tmp/lleaves-pkgs python bench/bench_compiled.py [--calls 20000] [--batch-rows 1000000] [--rounds 3]

lleaves 1.3.0 needs `llvmlite<0.44`, which breaks numba (vectorbt, a dev tool), so it lives outside the venv:
`pip install --target /tmp/lleaves-pkgs --no-deps "llvmlite<0.44" lleaves==1.3.0`. Without it, its rows are skipped.
Targets: batch >= lleaves 2 jobs; single-row p95 <= tl2cgen direct + 1 us; import <= 1.1x; compile: much cheaper.
"""
import argparse, ctypes, dataclasses, os, shlex, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import lightgbm as lgb
import numpy as np

from cryptoml.ingest import example_market
from cryptoml.features import build_features, read_feature_table
from cryptoml.tune import tune
from cryptoml.registry import promote, run_dir, save_run
from cryptoml.infer import FastBooster, LGBMProd, _kernel_object, compile_flags, compile_model, compile_run
from bench_infer import latencies_us, seconds  # this folder: the single-row timing loop and the clock

TREES = 136


def serve_model(home: Path):
    "A TREES-tree model of the example market saved as a run (with its calibrator) and promoted: its market, run id and rows."
    market = example_market(home)
    table_path = build_features(market, home=home, progress=False)
    table, _ = read_feature_table(table_path)
    result = tune(table, home=home, n_trials=1, n_boot=20, seed=0, progress=False)
    train = result.split.train
    params = {**result.params, "num_threads": 1, "num_leaves": 31, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(train[result.features], train.y), TREES)
    result = dataclasses.replace(result, booster=booster, best_iteration=TREES)
    run_id = save_run(result, home=home, table_path=table_path, n_boot=20)
    promote(run_id, home=home, force=True, n_boot=20)  # forced: a model made to be timed
    return market, run_id, table[result.features].to_numpy(np.float64)


def tl2cgen_compile(text: str, folder: Path) -> tuple[Path, float]:
    "A tl2cgen-compiled library of the model `text` in `folder`, and its compile seconds."
    import tl2cgen, treelite
    start = time.perf_counter()
    folder.mkdir(exist_ok=True)
    (folder/"model.txt").write_text(text)
    library = folder/"tl2cgen.so"
    tl2cgen.export_lib(treelite.frontend.load_lightgbm_model(str(folder/"model.txt")), toolchain="gcc", libpath=str(library))
    return library, time.perf_counter() - start


def tl2cgen_call(library: Path):
    "The tl2cgen-compiled `library`'s `predict`, called directly through ctypes, as a function of one row."
    lib = ctypes.CDLL(str(library))
    predict, row, out = lib.predict, (ctypes.c_double * 64)(), ctypes.c_double()  # room for any row of this model
    predict.restype, predict.argtypes = None, [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    address, out_ref = ctypes.addressof(row), ctypes.byref(out)

    def call(values: list) -> float:  # union Entry is 8 bytes: a double each (no value here is missing)
        row[:len(values)] = values
        out.value = 0.0
        predict(address, 0, out_ref)
        return out.value
    return call


def our_compile(text: str, path: Path, first: bool) -> float:
    "Seconds `compile_model` takes for `text`: as a process's first compile (`first`: the kernel too), or a later one."
    if first: _kernel_object.cache_clear()
    return seconds(lambda: compile_model(text, path))


def lleaves_model(path: Path):
    "lleaves' compiled model of the LightGBM model file `path`, and its compile seconds; None when lleaves is not importable."
    try: import lleaves
    except ImportError: return None, None
    start = time.perf_counter()
    model = lleaves.Model(model_file=str(path))
    model.compile()
    return model, time.perf_counter() - start


def import_seconds(statement: str) -> float:
    "Seconds a fresh interpreter takes to run `statement`, measured inside it."
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed single-row calls per measurement and round")
    parser.add_argument("--batch-rows", type=int, default=1_000_000, help="rows in the batch measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    parser.add_argument("--imports", type=int, default=7, help="fresh interpreters per import measurement")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="bench_compiled_"))
    try: report(home, args)
    finally: shutil.rmtree(home)


def report(home: Path, args):
    market, run_id, table_rows = serve_model(home)
    folder = run_dir(run_id, home)
    text = (folder/"lgbm.txt").read_text()
    compile_run(folder, home)  # ahead of the first load (else it serves the C API while it compiles); timed below
    compiled = LGBMProd(market, home=home)
    compiled.current()
    LGBMProd.compiled = False
    native = LGBMProd(path=folder/"lgbm.pkl", home=home)  # another path, so another instance: LightGBM's C API
    native.current()
    LGBMProd.compiled = True
    assert type(compiled.current().model).__name__ == "CompiledBooster", compiled.current().model
    raw = FastBooster(text)
    tl2 = tl2cgen_call(tl2cgen_compile(text, home)[0])
    lleaves, lleaves_compile = lleaves_model(folder/"lgbm.txt")

    batch = np.resize(table_rows[~np.isnan(table_rows).any(axis=1)], (args.batch_rows, table_rows.shape[1]))
    gap = np.max(np.abs(compiled.predict_proba(batch, num_threads=2) - native.predict_proba(batch, num_threads=2)))
    rows = [r for r in table_rows[-5000:].tolist() if not any(map(np.isnan, r))]
    dicts = [dict(zip(compiled.features, r)) for r in rows]
    batch_s = {"native": [], "compiled": [], "lleaves": []}
    single = {"compiled": [], "raw": [], "tl2cgen": []}
    imports = {"infer": [], "reference": []}
    compiles = {"first": [], "later": [], "tl2cgen": []}
    for r in range(args.rounds):
        compiles["first"].append(our_compile(text, home/f"ours-{r}.so", first=True))
        compiles["later"].append(our_compile(text, home/f"ours-{r}.so", first=False))
        compiles["tl2cgen"].append(tl2cgen_compile(text, home/f"tl2cgen-{r}")[1])
        batch_s["native"].append(seconds(lambda: native.predict_proba(batch, num_threads=2)))
        batch_s["compiled"].append(seconds(lambda: compiled.predict_proba(batch, num_threads=2)))
        if lleaves: batch_s["lleaves"].append(seconds(lambda: lleaves.predict(batch, n_jobs=2)))
        single["compiled"].append(latencies_us(compiled.predict_proba, dicts, args.calls))
        single["raw"].append(latencies_us(raw.predict_row, rows, args.calls))
        single["tl2cgen"].append(latencies_us(tl2, rows, args.calls))
        for _ in range(max(1, args.imports // args.rounds)):
            imports["infer"].append(import_seconds("from cryptoml.infer import LGBMProd"))
            imports["reference"].append(import_seconds("import lightgbm, numpy, pandas"))

    rate = {k: len(batch) / np.median(v) for k, v in batch_s.items() if v}
    p = {k: np.percentile(np.concatenate(v), [50, 95]) for k, v in single.items()}
    imp = {k: np.median(v) for k, v in imports.items()}
    build = {k: np.median(v) for k, v in compiles.items()}
    print(f"cryptoml compiled-model benchmark: run {run_id}, {TREES} trees, {len(compiled.features)} features, market {market}; "
          f"{args.rounds} interleaved rounds")
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end "
          "(shared: others' work inflates these figures)")
    print(f"compiled vs C API, max |difference| over {len(batch):,} rows: {gap:.3g}; our flags: {' '.join(compile_flags())}\n")
    print(f"{'figure':58s} {'cryptoml':>14s} {'reference':>14s} {'ratio':>7s}")
    def line(name, ours, ref, unit, better_high=True):
        ratio = (ours / ref if better_high else ref / ours) if ref else float("nan")
        print(f"{name:58s} {ours:>10.3g} {unit:3s} {ref:>10.3g} {unit:3s} {ratio:6.2f}x")
    if "lleaves" in rate:
        line("batch M rows/s: LGBMProd compiled | lleaves 2 jobs", rate["compiled"] / 1e6, rate["lleaves"] / 1e6, "M")
        line("batch M rows/s: LGBMProd C API | lleaves 2 jobs", rate["native"] / 1e6, rate["lleaves"] / 1e6, "M")
    line("batch M rows/s: LGBMProd compiled | LGBMProd C API", rate["compiled"] / 1e6, rate["native"] / 1e6, "M")
    line("single row p95 us: LGBMProd (dict) | tl2cgen direct", p["compiled"][1], p["tl2cgen"][1], "us", False)
    line("single row p95 us: LGBMProd (dict) | raw C API SingleRowFast", p["compiled"][1], p["raw"][1], "us", False)
    line("single row p50 us: LGBMProd (dict) | tl2cgen direct", p["compiled"][0], p["tl2cgen"][0], "us", False)
    line("import s: cryptoml.infer | lightgbm, numpy, pandas", imp["infer"], imp["reference"], "s", False)
    line("compile s: ours, a process's first (+ kernel) | tl2cgen (gcc)", build["first"], build["tl2cgen"], "s", False)
    line("compile s: ours, kernel compiled | tl2cgen (gcc)", build["later"], build["tl2cgen"], "s", False)
    if lleaves_compile: line("compile s: ours, a process's first | lleaves (LLVM), once", build["first"], lleaves_compile, "s", False)
    print(f"\nsingle-row p95 target: {p['compiled'][1]:.2f} us vs tl2cgen + 1 us = {p['tl2cgen'][1] + 1:.2f} us; "
          f"import target: ratio of infer to reference {imp['infer'] / imp['reference']:.2f} (<= 1.1)")
    print("ratio: cryptoml / reference for rates, reference / cryptoml for times (above 1: cryptoml is faster)")
    print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")


if __name__ == "__main__":
    main()
