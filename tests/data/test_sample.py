"""`data.path: tinystories-sample` (data/sources.py): the sample shipped in data/sample/, TINYSTORIES_DIR in its
place, every other path untouched, a decompression into the cache that is safe to race and to damage, and a fresh
clone of the repository that finds its data with nothing beside it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from data.corpus import DataError, load_stories, open_corpus
from data.sources import FILES, SAMPLE, SAMPLE_DIR, resolve_path

ROOT = Path(__file__).resolve().parents[2]
LOCAL_COPY = ROOT.parent / "shared" / "data" / "tinystories"  # the copy the sample was taken from, where present
FIRST_STORY = "One day, a little girl named Lily found a needle in her room."


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache root for this test, and TINYSTORIES_DIR unset."""
    monkeypatch.delenv("TINYSTORIES_DIR", raising=False)
    monkeypatch.setenv("TINYSTACK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def assert_intact(folder: Path) -> None:
    for name, (size, sha256) in FILES.items():
        data = (folder / name).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha256, name


def test_the_sample_decompresses_into_the_cache_with_its_stories(cache):
    folder = Path(resolve_path(SAMPLE))
    assert folder.parent == cache
    assert_intact(folder)
    stories = load_stories(SAMPLE)
    assert len(stories["train"]) == 4042 and len(stories["validation"]) == 800
    assert stories["train"][0].startswith(FIRST_STORY)


@pytest.mark.skipif(not LOCAL_COPY.is_dir(), reason="no local TinyStories copy beside the repository")
def test_the_sample_is_the_local_copy_byte_for_byte(cache):
    folder = Path(resolve_path(SAMPLE))
    for name in FILES:
        assert (folder / name).read_bytes() == (LOCAL_COPY / name).read_bytes(), name


def test_the_package_ships_the_compressed_files_and_the_notice():
    assert sorted(p.name for p in SAMPLE_DIR.iterdir()) == ["NOTICE.md", "train.txt.xz", "valid.txt.xz"]
    assert sum(p.stat().st_size for p in SAMPLE_DIR.glob("*.xz")) < 1_000_000
    notice = (SAMPLE_DIR / "NOTICE.md").read_text()
    assert "CDLA-Sharing-1.0" in notice and "not the full dataset" in notice


def test_tinystories_dir_replaces_the_sample(cache, tiny_corpus, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_DIR", str(tiny_corpus))
    assert resolve_path(SAMPLE) == str(tiny_corpus)
    assert load_stories(SAMPLE) == load_stories(str(tiny_corpus))
    assert open_corpus(SAMPLE).key == open_corpus(str(tiny_corpus)).key  # token caches of that copy stay valid
    assert not cache.exists()  # the sample was not needed


def test_a_missing_tinystories_dir_is_one_data_error(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="TINYSTORIES_DIR=.*nope"):
        open_corpus(SAMPLE)


@pytest.mark.parametrize("path", ["roneneldan/TinyStories", "./tinystories-sample", "tinystories-sample/",
                                  "TinyStories-Sample", "/data/stories", "~/stories", ""])
def test_other_paths_are_untouched(cache, path, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_DIR", "/elsewhere")  # replaces the name only
    assert resolve_path(path) == path
    assert not cache.exists()


def test_the_token_cache_keys_on_the_resolved_files(cache):
    assert open_corpus(SAMPLE).key == open_corpus(resolve_path(SAMPLE)).key


def test_damaged_files_and_dead_writers_temps_are_replaced(cache):
    folder = Path(resolve_path(SAMPLE))
    (folder / "train.txt").write_bytes(b"cut short")
    valid = bytearray((folder / "valid.txt").read_bytes())
    valid[len(valid) // 2] ^= 1  # same size, one bit off
    (folder / "valid.txt").write_bytes(valid)
    dead = folder / f"valid.txt.tmp-{socket.gethostname()}-999999999"  # no such process
    dead.write_bytes(b"half")
    assert resolve_path(SAMPLE) == str(folder)
    assert_intact(folder)
    assert not dead.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_is_one_data_error_naming_the_variable(cache):
    cache.mkdir(mode=0o555)
    with pytest.raises(DataError, match="TINYSTACK_CACHE") as info:
        resolve_path(SAMPLE)
    assert "\n" not in str(info.value) and "Permission denied" in str(info.value)


def test_an_unwritable_cache_is_one_data_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYSTORIES_DIR", raising=False)
    (tmp_path / "file").write_text("a file where a folder should be")
    monkeypatch.setenv("TINYSTACK_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(DataError, match="cannot write the TinyStories sample .*set TINYSTACK_CACHE") as info:
        open_corpus(SAMPLE)
    assert "\n" not in str(info.value)


def test_a_read_only_cache_that_holds_the_sample_is_used(cache):
    folder = Path(resolve_path(SAMPLE))
    for path in (folder, cache):
        path.chmod(0o555)
    try:
        assert resolve_path(SAMPLE) == str(folder)
    finally:
        for path in (cache, folder):
            path.chmod(0o755)


def test_concurrent_resolution_gives_whole_files(cache):
    script = "from data.sources import resolve_path; print(resolve_path('tinystories-sample'))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT) for _ in range(6)]
    with ThreadPoolExecutor(4) as pool:
        in_process = list(pool.map(lambda _: resolve_path(SAMPLE), range(4)))
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    folders = {out.strip() for out, _ in results} | set(in_process)
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert_intact(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["extract.lock", "train.txt", "valid.txt"]  # no temp left


@pytest.mark.slow
def test_the_cli_reports_an_unwritable_cache_in_one_line(tmp_path):
    (tmp_path / "file").write_text("a file where a folder should be")
    env = {k: v for k, v in os.environ.items() if k != "TINYSTORIES_DIR"}
    env["TINYSTACK_CACHE"] = str(tmp_path / "file" / "cache")
    result = subprocess.run([sys.executable, "-m", "train", "--config", "configs/pretrain/demo.yaml",
                             f"--train.out_dir={tmp_path / 'runs'}"], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.strip().startswith("error: cannot write the TinyStories sample")
    assert "TINYSTACK_CACHE" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_fresh_clone_reads_the_demo_data_with_nothing_beside_it(tmp_path):
    """The committed repository, cloned where no ../shared exists, offline, without TINYSTORIES_DIR, with an empty
    cache: the demo config's corpus is the shipped sample, read from the clone's own files."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("TINYSTORIES_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(clone), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TINYSTACK_CACHE=str(tmp_path / "cache"))
    script = """if True:
        import json
        import data.sources
        from data.corpus import load_stories
        from train.config import load_config
        cfg = load_config("configs/pretrain/demo.yaml")
        stories = load_stories(cfg.data.path)
        print(json.dumps({"code": data.sources.__file__, "path": cfg.data.path,
                          "resolved": data.sources.resolve_path(cfg.data.path),
                          "counts": [len(stories["train"]), len(stories["validation"])],
                          "first": stories["train"][0]}))
    """
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=clone, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["code"]).is_relative_to(clone)
    assert found["path"] == SAMPLE and Path(found["resolved"]).is_relative_to(tmp_path / "cache")
    assert found["counts"] == [4042, 800] and found["first"].startswith(FIRST_STORY)
