"""A local Binance for tests and benchmarks: an HTTP server on 127.0.0.1 that answers the public REST endpoints the
real `ccxt.binance` calls for bars, funding rates and open interest, and fails on demand.

    with BinanceEmulator(bars={"BTC/USDT": df}, funding={"BTC/USDT": rates}, open_interest={"BTC/USDT": oi}) as exchange:
        client = binance_client(exchange.url)          # the real ccxt.binance, pointed at the emulator
        exchange.inject("klines", "429", "slow")       # the next two klines requests fail so
        ingest(client, "BTC/USDT", "1m", ...)

Endpoints: spot `/api/v3/exchangeInfo` and `/api/v3/klines`; USDT-M futures `/fapi/v1/exchangeInfo`,
`/fapi/v1/klines` (the spot bars), `/fapi/v1/fundingRate` and `/futures/data/openInterestHist` (open interest
statistics: ts, open interest in the base coin and its value in the quote). Klines carry Binance's 12 fields, taker
buy volume among them (ccxt's `fetch_ohlcv` drops it; its raw `publicGetKlines`/`fapiPublicGetKlines` keep it). Each
follows Binance's paging rules: rows from `startTime` (else the latest), at most `limit`, none after `endTime`.

Faults (`inject(endpoint, *faults, symbol=None)`, applied to that endpoint's next requests in order, or with `symbol`
(Binance's id, e.g. "ETHUSDT") to its next requests for that market only):
  "ok" a normal answer (to aim the next fault further on); "429" rate limited; "500", "502", "503" server errors; "401" rejected credentials (permanent);
  "slow" an answer after `slow_seconds` (longer than the client's timeout); "drop" the connection closed
  half-way through the body; "repeat" the previous answer again (rows before `startTime`);
  "overlap" a page starting half a page early; "corrupt" a page whose middle row has its high below its low
  (klines) or a non-numeric rate (fundingRate) or open interest (openInterestHist): its ts is appended to `corrupted`.
Hostile answers, each stamped into `hostile` (fault, ts of the row it bent, or None):
  "418" the status Binance bans an IP with (I'm a teapot); "599" a status no table knows; "garbled" a 200 whose body
  is malformed JSON; "nulls" a page whose rows are all null; "future" a page whose last row opens on 2100-01-01;
  "open" (klines) a page whose last row is the bar still forming now; "shuffle" a page in reverse order (not monotonic).
"""
from __future__ import annotations
import json, socket, threading, time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import ccxt
import numpy as np
import pandas as pd

FAULTS = {"ok", "429", "500", "502", "503", "401", "slow", "drop", "repeat", "overlap", "corrupt",
          "418", "599", "garbled", "nulls", "future", "open", "shuffle"}
ERRORS = {"429": {"code": -1003, "msg": "Too many requests; current limit is 6000 request weight per 1 MINUTE."},
          "401": {"code": -2014, "msg": "API-key format invalid."},
          "500": {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."},
          "502": "<html><body><h1>502 Bad Gateway</h1></body></html>", "503": "Service Unavailable",
          "418": {"code": -1003, "msg": "Way too many requests; IP banned until 4102444800000."},
          "599": "<html><body>Network connect timeout error</body></html>"}
FUTURE_MS = 4_102_444_800_000  # 2100-01-01, the open of the "future" fault's bar
HOSTILE = {"garbled", "nulls", "future", "open", "shuffle"}
INTERVAL_MS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "4h": 14_400_000, "1d": 86_400_000}
LIMITS = {"klines": (500, 1000), "fundingRate": (100, 1000), "openInterestHist": (30, 500)}   # (default, max) rows a page
STAMP = {"fundingRate": "fundingTime", "openInterestHist": "timestamp"}                     # a dict row's time field
CORRUPTED = {"fundingRate": "fundingRate", "openInterestHist": "sumOpenInterest"}           # the value a "corrupt" fault bends


def _epoch_ms(ts: pd.Series) -> np.ndarray:
    "A ts column (datetimes or epoch ms) as int64 epoch milliseconds."
    return (ts.astype("datetime64[ms, UTC]") if not pd.api.types.is_integer_dtype(ts) else ts).astype("int64").to_numpy()


def binance_klines(bars: pd.DataFrame, interval_ms: int = 60_000, time_unit: str = "ms") -> pd.DataFrame:
    "`bars` in Binance's 12-column kline layout (its dump header names), times in epoch `time_unit` ('ms', or 'us' as since 2025)."
    ms, scale = _epoch_ms(bars.ts), {"ms": 1, "us": 1000}[time_unit]
    quote = (bars.volume * bars.close).to_numpy()
    return pd.DataFrame({"open_time": ms * scale, "open": bars.open.to_numpy(), "high": bars.high.to_numpy(), "low": bars.low.to_numpy(),
                         "close": bars.close.to_numpy(), "volume": bars.volume.to_numpy(), "close_time": (ms + interval_ms - 1) * scale,
                         "quote_volume": quote, "count": 10, "taker_buy_volume": bars.volume.to_numpy() / 2,
                         "taker_buy_quote_volume": quote / 2, "ignore": 0})


def _kline_rows(bars: pd.DataFrame, interval_ms: int) -> tuple[np.ndarray, list[str]]:
    "Binance's kline rows for `bars` as its REST API sends them (prices and volumes as strings), pre-rendered as JSON."
    k = binance_klines(bars, interval_ms)
    decimals = lambda c: [f"{x:.8f}" for x in k[c]]
    rows = [json.dumps([int(t), o, h, l, c, v, int(ct), q, int(n), tb, tq, "0"], separators=(",", ":"))
            for t, o, h, l, c, v, ct, q, n, tb, tq in zip(k.open_time, *map(decimals, ["open", "high", "low", "close", "volume"]),
                                                          k.close_time, decimals("quote_volume"), k["count"],
                                                          decimals("taker_buy_volume"), decimals("taker_buy_quote_volume"))]
    return k.open_time.to_numpy(), rows


def _funding_rows(market_id: str, rates: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    "Binance's fundingRate rows for `rates`, pre-rendered as JSON, with their times."
    ms = _epoch_ms(rates.ts)
    return ms, [json.dumps({"symbol": market_id, "fundingTime": int(t), "fundingRate": f"{r:.8f}", "markPrice": "20000.00000000"},
                           separators=(",", ":")) for t, r in zip(ms, rates.funding_rate)]


def _interest_rows(market_id: str, interest: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    "Binance's openInterestHist rows for `interest` (ts, open_interest, open_interest_value), pre-rendered as JSON, with their times."
    ms = _epoch_ms(interest.ts)
    return ms, [json.dumps({"symbol": market_id, "sumOpenInterest": f"{oi:.8f}", "sumOpenInterestValue": f"{value:.8f}",
                            "timestamp": int(t)}, separators=(",", ":"))
                for t, oi, value in zip(ms, interest.open_interest, interest.open_interest_value)]


def _market_id(symbol: str) -> str: return symbol.replace("/", "")


def _spot_info(symbol: str) -> dict:
    base, quote = symbol.split("/")
    return {"symbol": _market_id(symbol), "status": "TRADING", "baseAsset": base, "quoteAsset": quote, "baseAssetPrecision": 8,
            "quotePrecision": 8, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False, "permissions": ["SPOT"],
            "orderTypes": ["LIMIT", "MARKET"], "filters": [{"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000.00",
                                                            "tickSize": "0.01"}]}


def _perp_info(symbol: str) -> dict:
    base, quote = symbol.split("/")
    return {"symbol": _market_id(symbol), "pair": _market_id(symbol), "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000, "status": "TRADING", "baseAsset": base, "quoteAsset": quote, "marginAsset": quote,
            "pricePrecision": 2, "quantityPrecision": 3, "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN",
            "filters": [], "orderTypes": ["LIMIT", "MARKET"]}


class BinanceEmulator:
    "A threaded HTTP server on 127.0.0.1 speaking Binance's public REST API for the given bars, funding rates and open interest."

    def __init__(self, bars: dict[str, pd.DataFrame] | None = None, funding: dict[str, pd.DataFrame] | None = None, *,
                 open_interest: dict[str, pd.DataFrame] | None = None, interval: str = "1m", delay: float = 0.0,
                 slow_seconds: float = 1.0):
        self.interval, self.delay, self.slow_seconds = interval, delay, slow_seconds
        self.klines = {_market_id(s): _kline_rows(b, INTERVAL_MS[interval]) for s, b in (bars or {}).items()}
        self.rates = {_market_id(s): _funding_rows(_market_id(s), r) for s, r in (funding or {}).items()}
        self.interest = {_market_id(s): _interest_rows(_market_id(s), i) for s, i in (open_interest or {}).items()}
        self.spot = [_spot_info(s) for s in bars or {}]
        self.perps = [_perp_info(s) for s in dict.fromkeys([*(funding or {}), *(open_interest or {})])]
        self.faults: dict[str | tuple[str, str], deque] = defaultdict(deque)
        self.requests: list[tuple[str, dict]] = []
        self.request_times: list[float] = []
        self.corrupted: list[int] = []
        self.hostile: list[tuple[str, int | None]] = []
        self.served: dict[str, tuple[int, int]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str: return f"http://127.0.0.1:{self._server.server_port}"

    def inject(self, endpoint: str, *faults: str, symbol: str | None = None):
        "Make the next requests to `endpoint` ('klines', 'fundingRate', 'openInterestHist', 'exchangeInfo'), or only those for the market `symbol`, fail with `faults`, in order."
        unknown = set(faults) - FAULTS
        if unknown: raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {sorted(FAULTS)}")
        self.faults[endpoint if symbol is None else (endpoint, symbol)].extend(faults)

    def count(self, endpoint: str) -> int:
        "Requests made so far to `endpoint`."
        return sum(path.endswith("/" + endpoint) for path, _ in self.requests)

    def start(self) -> "BinanceEmulator":
        "Serve from a background thread."
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def close(self):
        "Stop serving and free the port."
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self): return self.start()

    def __exit__(self, *exc): self.close()

    def answer(self, path: str, params: dict) -> tuple[int, str, str | None]:
        "(status, JSON body, fault) for a GET of `path` with `params`."
        self.requests.append((path, params))
        self.request_times.append(time.monotonic())
        endpoint = path.rsplit("/", 1)[-1]
        queue = next((q for q in (self.faults.get((endpoint, params.get("symbol"))), self.faults[endpoint]) if q), None)
        fault = queue.popleft() if queue else None
        if fault in ERRORS: return int(fault), ERRORS[fault] if isinstance(ERRORS[fault], str) else json.dumps(ERRORS[fault]), fault
        if endpoint == "exchangeInfo":
            symbols = self.perps if path.startswith("/fapi/") else self.spot
            return 200, json.dumps({"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": [], "exchangeFilters": [],
                                    "symbols": symbols}), fault
        table = {"klines": self.klines, "fundingRate": self.rates, "openInterestHist": self.interest}.get(endpoint)
        if table is None: return 404, json.dumps({"code": -1000, "msg": f"no endpoint {path} here"}), fault
        if endpoint == "klines" and params.get("interval") != self.interval:
            return 400, json.dumps({"code": -1120, "msg": "Invalid interval."}), fault
        if params.get("symbol") not in table: return 400, json.dumps({"code": -1121, "msg": "Invalid symbol."}), fault
        time.sleep(self.delay)
        return 200, self._page(endpoint, table[params["symbol"]], params, fault), fault

    def _page(self, endpoint: str, data: tuple[np.ndarray, list[str]], params: dict, fault: str | None) -> str:
        "One page of rows by Binance's paging rules, bent by `fault`."
        ms, rows = data
        default, most = LIMITS[endpoint]
        limit = min(int(params.get("limit", default)), most)
        end = np.searchsorted(ms, int(params["endTime"]), "right") if "endTime" in params else len(ms)
        start = np.searchsorted(ms, int(params["startTime"])) if "startTime" in params else max(end - limit, 0)
        if fault == "overlap": start = max(start - limit // 2, 0)
        start, stop = self.served[endpoint] if fault == "repeat" and endpoint in self.served else (start, min(start + limit, end))
        self.served[endpoint] = start, stop
        page = rows[start:stop]
        if fault == "corrupt" and page: page = page.copy(); page[len(page) // 2] = self._corrupt(endpoint, page[len(page) // 2])
        if fault in HOSTILE: page = self._hostile(endpoint, fault, page)
        if fault == "garbled": return "[" + ",".join(page)[:-7] + ",,]"
        return "[" + ",".join(page) + "]"

    def _hostile(self, endpoint: str, fault: str, page: list[str]) -> list[str]:
        "`page` bent by a hostile `fault`; the fault and the ts of the row it bent (None for the whole page) go to `hostile`."
        rows, bent = [json.loads(r) for r in page], None
        if fault == "nulls": rows = [[None] * len(r) if isinstance(r, list) else dict.fromkeys(r) for r in rows]
        elif fault == "shuffle": rows = rows[::-1]
        elif fault == "future" and rows: bent = self._restamp(rows[-1], FUTURE_MS, endpoint)
        elif fault == "open" and rows and endpoint == "klines":
            step = INTERVAL_MS[self.interval]
            bent = self._restamp(rows[-1], int(time.time() * 1000) // step * step)
        self.hostile.append((fault, bent))
        return [json.dumps(r, separators=(",", ":")) for r in rows]

    def _restamp(self, row: list | dict, ms: int, endpoint: str = "klines") -> int:
        "Move a kline, funding or open-interest `row` to open (or be stamped) at `ms`; returns `ms`."
        if isinstance(row, dict): row[STAMP[endpoint]] = ms
        else: row[0], row[6] = ms, ms + INTERVAL_MS[self.interval] - 1
        return ms

    def _corrupt(self, endpoint: str, row: str) -> str:
        "`row` made impossible: a kline's high below its low, or a funding rate or open interest that is not a number."
        values = json.loads(row)
        if endpoint == "klines": values[2] = f"{float(values[3]) - 1:.8f}"
        else: values[CORRUPTED[endpoint]] = "not-a-number"
        self.corrupted.append(values[0] if endpoint == "klines" else values[STAMP[endpoint]])
        return json.dumps(values)

    def _handler(self):
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args): pass

            def setup(self):
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as real servers do: no Nagle stalls

            def do_GET(self):
                url = urlsplit(self.path)
                status, body, fault = emulator.answer(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
                data = body.encode()
                if fault == "slow": time.sleep(emulator.slow_seconds)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json;charset=UTF-8" if body[:1] in "[{" else "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[:len(data) // 2] if fault == "drop" else data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError): pass
                if fault == "drop" or fault == "slow": self.close_connection = True

        return Handler


def binance_client(url: str, *, timeout_ms: int = 2000, market_types=("spot", "linear"), **config) -> ccxt.binance:
    "The real `ccxt.binance` with every API URL pointed at `url`, loading only `market_types` markets, rate limiter on."
    client = ccxt.binance({"timeout": timeout_ms, "enableRateLimit": True, "options": {"fetchMarkets": {"types": list(market_types)}}, **config})
    client.urls["api"] = {name: url + urlsplit(base).path for name, base in client.urls["api"].items()}
    return client
