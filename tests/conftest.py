"Fixtures shared by the integration tests: the real market data in ../shared/data, when this machine has it."
import os
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import pytest
from hypothesis import settings
from cryptoml.core import shared_data

# Under CI (the CI variable, which .ci/run sets) property tests replay the same examples, so a rare case cannot fail
# CI by chance; elsewhere each run draws new ones and keeps what fails in .hypothesis/ to replay it.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"): settings.load_profile("ci")

BARS_CSV = "binanceus_BTCUSDT_1m_2023-03-01_2023-03-21.csv"
FUNDING_CSV = "binance_BTCUSDT_perp_funding_8h_2023-02-15_2023-03-31.csv"

def _shared(name):
    path = shared_data(name)
    if path is None: pytest.skip(f"real market data {name} is not on this machine (../shared/data); CI has it")
    return path

@pytest.fixture(scope="session")
def bars_csv():
    "The shared real 1-minute BTC/USDT bars (skips where absent)."
    return _shared(BARS_CSV)

@pytest.fixture(scope="session")
def funding_csv():
    "The shared real BTCUSDT perpetual funding rates (skips where absent)."
    return _shared(FUNDING_CSV)
