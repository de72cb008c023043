"""Ingest benchmark: minute bars end to end (HTTP + ccxt parsing + validation + Parquet writes) from a local Binance
with ccxt's rate limiter on, and the import of the shared real CSV. Prints one table of figures and the command.

    python bench/bench_ingest.py [--days 30] [--repeat 3]
"""
import argparse, os, statistics, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/"tests"))
from cryptoml.ingest import EXAMPLE_FILES, import_csv, ingest, read_bars, synthetic_market
from cryptoml.core import shared_data
from exchange_emulator import BinanceEmulator, binance_client


def timed(run, repeat: int) -> tuple[list[float], object]:
    "Wall seconds of `repeat` calls of `run()`, each in a fresh data root, and the last result."
    seconds = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bench_ingest_") as home:
            start = time.perf_counter()
            result = run(home)
            seconds.append(time.perf_counter() - start)
    return seconds, result


def bench_fetch(days: int, repeat: int) -> dict:
    bars = synthetic_market(days=days, seed=0)
    with BinanceEmulator(bars={"BTC/USDT": bars}) as exchange:
        def run(home):
            client = binance_client(exchange.url, market_types=("spot",))
            report = ingest(client, "BTC/USDT", "1m", since=bars.ts.iloc[0], home=home, progress=False)
            assert client.enableRateLimit and report.rows_added == len(bars) == len(read_bars(home, "binance", "BTC/USDT", "1m"))
            return report
        seconds, _ = timed(run, repeat)
        requests = exchange.count("klines") // repeat
    return dict(what=f"ingest {days} days of 1m bars: ccxt.binance -> 127.0.0.1, rate limiter on", rows=len(bars),
                requests=requests, seconds=seconds, target=5.0)


def bench_import(repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        csv = shared_data(EXAMPLE_FILES[0])
        if csv is None:                       # a fresh clone: the same number of synthetic minutes
            csv = Path(scratch)/"synthetic_1m_21_days.csv"
            synthetic_market(days=21).to_csv(csv, index=False)
        seconds, report = timed(lambda home: import_csv(csv, "binanceus", "BTC/USDT", "1m", home=home), repeat)
    return dict(what=f"import_csv {csv.name}", rows=report.rows_added, requests="-", seconds=seconds, target=1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = [bench_fetch(args.days, args.repeat), bench_import(args.repeat)]
    print(f"$ python bench/bench_ingest.py --days {args.days} --repeat {args.repeat}")
    print(f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"| {'what':<70} | {'rows':>6} | {'requests':>8} | {'median s':>8} | {'best s':>6} | {'rows/s':>9} | {'target s':>8} |")
    print(f"|{'-' * 72}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 11}|{'-' * 10}|")
    for r in rows:
        median = statistics.median(r["seconds"])
        print(f"| {r['what']:<70} | {r['rows']:>6} | {r['requests']:>8} | {median:>8.2f} | {min(r['seconds']):>6.2f} | "
              f"{r['rows'] / median:>9,.0f} | {'<= ' + str(r['target']):>8} |")


if __name__ == "__main__":
    main()
