"""Where the corpus named by `data.path` is read from: the one rule every command that opens a corpus follows.

    tinystories-sample   the TinyStories sample shipped in data/sample/ (4,042 training and 800 validation
                         stories, xz; licence and provenance in data/sample/NOTICE.md), or the folder in the
                         environment variable TINYSTORIES_DIR when it is set (a fuller local copy)
    anything else        unchanged: a local directory or file, or a Hugging Face hub id (data/corpus.py)

The sample is decompressed once into `<cache>/tinystories-sample-<hash>/`, where <cache> is $TINYSTACK_CACHE,
else $XDG_CACHE_HOME/tinystack, else ~/.cache/tinystack. Each file is written to a temp file under a lock, checked
against its size and sha256 and renamed into place, so processes resolving at once (DDP ranks, parallel sweeps)
find either no file or a whole one; a damaged file is rewritten. A warm call hashes the 4 MB (milliseconds).
Token caches key on the files found at the resolved path (data/corpus.py `Corpus.key`), never on the name.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
from pathlib import Path

from data.cache import build_lock, clean_stale, temp_path
from data.readers import DataError

SAMPLE = "tinystories-sample"
SAMPLE_DIR = Path(__file__).parent / "sample"
FILES = {  # decompressed name -> (bytes, sha256); data/sample/<name>.xz holds it
    "train.txt": (3_514_789, "9efcd26d453118df9e69b28b946812d9cee03fe437c0f5b0cbd7680a3dc9c3a2"),
    "valid.txt": (648_401, "09ea1375b25640fca51f2ec1ab7dac394b6113e6cfaf5619299b4dc0499997a0"),
}


def cache_root() -> Path:
    if os.environ.get("TINYSTACK_CACHE"):
        return Path(os.environ["TINYSTACK_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tinystack"


def _intact(path: Path, size: int, sha256: str) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _intact_all(folder: Path) -> bool:
    return all(_intact(folder / name, *expected) for name, expected in FILES.items())


def _extract(folder: Path) -> None:
    """Decompress the files of FILES that `folder` lacks (or holds damaged), each published by an atomic rename."""
    folder.mkdir(parents=True, exist_ok=True)
    with build_lock(folder, "extract"):  # one writer; the others wait, then find the files
        clean_stale(folder)
        for name, expected in FILES.items():
            target = folder / name
            if _intact(target, *expected):
                continue
            tmp = temp_path(target)
            with lzma.open(SAMPLE_DIR / f"{name}.xz") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if not _intact(tmp, *expected):
                tmp.unlink()
                raise DataError(f"{SAMPLE_DIR / name}.xz does not decompress to the expected bytes (sha256 "
                                f"{expected[1][:12]}...); reinstall the package")
            os.replace(tmp, target)


def sample_dir() -> Path:
    """The folder holding the embedded sample's train.txt and valid.txt, decompressed on first use."""
    folder = cache_root() / f"{SAMPLE}-{FILES['train.txt'][1][:8]}"
    if _intact_all(folder):
        return folder
    try:
        _extract(folder)
    except OSError as err:
        raise DataError(f"cannot write the TinyStories sample to {folder} ({err.strerror or err}); set "
                        "TINYSTACK_CACHE to a writable folder (or TINYSTORIES_DIR to a local copy)") from None
    return folder


def resolve_path(path: str) -> str:
    """The local folder, file or hub id that `path` (a data.path value) stands for."""
    if path != SAMPLE:
        return path
    override = os.environ.get("TINYSTORIES_DIR")
    if override:
        if not Path(override).expanduser().exists():
            raise DataError(f"TINYSTORIES_DIR={override} does not exist; point it at a local TinyStories copy, "
                            f"or unset it to use the embedded sample")
        return override
    return str(sample_dir())
