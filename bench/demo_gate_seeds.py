"""Does README's main job pass the honest gate with margin, whatever the seed? `cryptoml pipeline --demo --seed K`
in a fresh data root for each seed (30 synthetic days, 50 trials, as README runs it), then the gate's numbers: the
tuned model's validation accuracy, and its paired log-loss gain over the majority forecast and the logistic
regression on the rows it never trained on, with 95% intervals. A rerun of the first seed must be refused.

    python bench/demo_gate_seeds.py [--seeds 0 1 2 3 4] [--trials 50] [--days 30] [--val-days 14]
"""
import argparse, contextlib, io, os, shlex, sys, tempfile, time

from cryptoml.cli import main
from cryptoml.ingest import SYNTHETIC
from cryptoml.registry import read_promotions


def pipeline(home: str, seed: int, args) -> tuple[int, dict]:
    "Run `cryptoml pipeline --demo` in `home`; its exit status and the gate's last decision."
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(["pipeline", "--demo", "--seed", str(seed), "--trials", str(args.trials), "--days", str(args.days),
                       "--val-days", str(args.val_days), "--home", home, "--quiet"])
    return status, read_promotions(home=home, market=SYNTHETIC)[-1]


def gain(decision: dict, baseline: str) -> str:
    g = next(g for g in decision["scores"]["gains"] if g["baseline"] == baseline and g["metric"] == "log_loss")
    return f"{g['gain']:+.5f} [{g['lo']:+.5f}, {g['hi']:+.5f}]"


def main_(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--val-days", type=float, default=14)
    args = parser.parse_args(argv)
    print(f"{'seed':>4} {'exit':>4} {'rows':>6} {'accuracy':>8}  {'gain over majority [95% CI]':30} {'gain over logreg [95% CI]':30} {'s':>5}")
    homes = {}
    for seed in args.seeds:
        homes[seed] = tempfile.mkdtemp(prefix=f"demo_gate_{seed}_")
        start = time.perf_counter()
        status, d = pipeline(homes[seed], seed, args)
        accuracy = d["scores"]["metrics"]["candidate"]["accuracy"]
        print(f"{seed:>4} {status:>4} {d['scores']['rows']:>6} {accuracy:8.4f}  {gain(d, 'majority'):30} {gain(d, 'logreg'):30} "
              f"{time.perf_counter() - start:5.0f}")
    status, d = pipeline(homes[args.seeds[0]], args.seeds[0], args)
    print(f"\nrerun of seed {args.seeds[0]}: exit {status}, {d['reason']}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; command: {shlex.join([sys.executable, *sys.argv])}")


if __name__ == "__main__":
    main_()
