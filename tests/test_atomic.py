"""A writer killed with SIGKILL mid-write leaves the old file or the new one, never a truncated file.

Each test starts a real Python process that rewrites one file (or flips one symlink) as fast as it can
through cryptoml.core's atomic writers, kills it with SIGKILL at a random moment, and reads what is left.
"""
import hashlib, json, os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pandas as pd
import pytest
from cryptoml.core import atomic_write_json

KILLS = 12

def payload(i: int, size: int = 1 << 20) -> bytes:
    "Version `i` of a self-checking file: a header with the body's sha256, then the body."
    body = hashlib.sha256(str(i).encode()).digest() * (size // 32)
    return f"{i} {hashlib.sha256(body).hexdigest()}\n".encode() + body

def check_payload(data: bytes) -> int:
    "The version a self-checking file holds; AssertionError if it is truncated or mixed."
    header, body = data.split(b"\n", 1)
    version, digest = header.decode().split()
    assert hashlib.sha256(body).hexdigest() == digest, f"version {version} is truncated or corrupt ({len(data)} bytes)"
    return int(version)

def writer(script: str) -> subprocess.Popen:
    "Start a process that runs `script` (with cryptoml.core imported) and tells us when it is writing."
    code = "import sys, os, json, hashlib, pandas as pd\nfrom cryptoml.core import *\n" + textwrap.dedent(script)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing", proc.stderr.read().decode()
    return proc

def kill_at_random(proc: subprocess.Popen, rng: random.Random):
    "SIGKILL `proc` after a random pause of up to 50 ms."
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()

def leftovers(folder: Path, keep: set) -> list:
    "Files in `folder` other than `keep` that are not the killed writer's abandoned temporaries."
    return [p.name for p in folder.iterdir() if p.name not in keep and not p.name.endswith(".tmp")]

def test_payload_check_catches_truncation():
    data = payload(3)
    assert check_payload(data) == 3
    with pytest.raises(AssertionError, match="truncated"): check_payload(data[: len(data) // 2])

def test_killed_bytes_writer_leaves_whole_file(tmp_path):
    target, rng = tmp_path/"blob.bin", random.Random(0)
    target.write_bytes(payload(0))
    seen = set()
    for k in range(KILLS):
        start = check_payload(target.read_bytes())
        proc = writer(f"""
            from tests.test_atomic import payload
            print("writing", flush=True)
            i = {start}
            while True:
                i += 1
                atomic_write_bytes({str(target)!r}, payload(i))
        """)
        kill_at_random(proc, rng)
        seen.add(check_payload(target.read_bytes()))
    assert len(seen) > KILLS // 2, "the writer should have been killed at many different versions"
    assert leftovers(tmp_path, {"blob.bin"}) == []

def test_killed_json_and_parquet_writers_leave_whole_files(tmp_path):
    card, table, rng = tmp_path/"card.json", tmp_path/"t.parquet", random.Random(1)
    frame = lambda i: pd.DataFrame({"ts": pd.date_range("2023-03-01", periods=50_000, freq="1min", tz="UTC"), "v": float(i)})
    atomic_write_json(card, {"version": 0, "pad": "x" * 100_000})
    for k in range(KILLS):
        proc = writer(f"""
            print("writing", flush=True)
            i = 0
            while True:
                i += 1
                atomic_write_json({str(card)!r}, {{"version": i, "pad": "x" * 100_000}})
                atomic_write_parquet({str(table)!r}, pd.DataFrame({{"ts": pd.date_range("2023-03-01", periods=50_000, freq="1min", tz="UTC"), "v": float(i)}}))
        """)
        kill_at_random(proc, rng)
        assert len(json.loads(card.read_text())["pad"]) == 100_000
        if table.exists():
            got = pd.read_parquet(table)
            pd.testing.assert_frame_equal(got, frame(got.v.iloc[0]), check_dtype=False)

def test_killed_symlink_swapper_leaves_a_working_link(tmp_path):
    rng = random.Random(2)
    for name in ["a", "b"]:
        (tmp_path/name).mkdir()
        (tmp_path/name/"lgbm.pkl").write_text(name)
    link = tmp_path/"best_lgbm.pkl"
    os.symlink("a/lgbm.pkl", link)
    for k in range(KILLS):
        proc = writer(f"""
            print("writing", flush=True)
            while True:
                for name in "ab": atomic_symlink(name + "/lgbm.pkl", {str(link)!r})
        """)
        kill_at_random(proc, rng)
        assert link.is_symlink() and link.read_text() in {"a", "b"}
    assert leftovers(tmp_path, {"a", "b", "best_lgbm.pkl"}) == []
