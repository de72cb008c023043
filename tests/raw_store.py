"The raw store as the tests see it from outside: one checksum over every file, equal before and after a refused write."
import hashlib
from pathlib import Path


def digest(home) -> str:
    "sha256 over the path and bytes of every file under the data root's raw store."
    h = hashlib.sha256()
    for p in sorted((Path(home)/"raw").rglob("*")):
        if p.is_file(): h.update(str(p.relative_to(home)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()
