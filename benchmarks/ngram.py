"""N-gram baselines at scale: wall time and peak memory of fitting and scoring data/ngram.py's models.

    python benchmarks/ngram.py --scales 10 100 --out benchmarks/results/ngram_cpu

For each scale k, a corpus of k copies of the shipped TinyStories sample (data/sources.py) is written under --root
in the V2 layout (TinyStoriesV2-GPT4-train.txt and -valid.txt, as a TINYSTORIES_DIR holds them), tokenized with a
4096-token BPE (data/tokens.py, cached under --root), then fitted and scored in a fresh process, so that its peak
resident memory (resource.getrusage in the child, in MiB, the memory-mapped tokens included) is the fit's, beside
the child's peak before the fit (its imports and token maps).
Repeating the sample keeps the number of distinct n-grams at the sample's: the time grows with the tokens as on
real text, the tables (and so memory) stay smaller than on as many tokens of the full corpus. Its losses are no
reference either: every training n-gram occurs at least k times, so D_n (from the n-grams seen once or twice) is
near 0 and an n-gram unseen in training gets little probability.
With --tiled, a scale above 1 skips writing and tokenizing its corpus: its token files are the sample's tokens
repeated k times, which is what tokenizing k copies gives, as every story is encoded on its own. The benchmark proves
it before it fits: the tokens of 2 copies, tokenized, must equal the sample's tokens tiled twice, or it stops. The
fit then sees a token stream the size of the V2 files' (about 2.2 GB of training text and 22 MB of validation text:
634 and 35 copies of the sample's 3.5 MB and 0.65 MB) at the cost of writing it:
    python benchmarks/ngram.py --scales 1 634 --val_copies 35 --tiled --out benchmarks/results/ngram_cpu_v2
Repeated text holds only the sample's distinct n-grams, and the fit's merges and tables grow with those:
--distinct_copies K relabels the ids of K - 1 training copies (`tile`), for about K times the sample's distinct
trigrams, as many as a varied corpus of that size would hold; that run measures time and memory, not losses.
Writes <out>.json and <out>.md (default runs/benchmarks/ngram).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from benchmarks.common import RESULTS, check_out, cpu_name, write_outputs  # noqa: E402
from data import ngram  # noqa: E402
from data.sources import SAMPLE, resolve_path  # noqa: E402
from data.tokenizer import eot_id  # noqa: E402
from data.tokens import prepare_tokens  # noqa: E402
from train.cli import user_errors_exit_2  # noqa: E402

VOCAB = 4096  # the demo's vocabulary (configs/pretrain/demo.yaml)
TOKENIZER_SAMPLE = 10_000  # stories the BPE trains on: the whole sample, whatever the scale
FILES = {"train.txt": "TinyStoriesV2-GPT4-train.txt", "valid.txt": "TinyStoriesV2-GPT4-valid.txt"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", nargs="+", type=int, default=[10], help="copies of the sample per corpus")
    p.add_argument("--root", default="/tmp/tinystack-ngram-bench", help="corpora and token caches go here")
    p.add_argument("--out", default=str(RESULTS / "ngram"), help="writes <out>.json and <out>.md")
    p.add_argument("--tiled", action="store_true", help="scales above 1: the sample's tokens repeated, not tokenized")
    p.add_argument("--val_copies", type=int, help="with --tiled: copies of the validation split (default: the scale)")
    p.add_argument("--distinct_copies", type=int, default=1,
                   help="with --tiled: training copies with their own relabelled ids (tables as on varied text)")
    args = p.parse_args(argv)
    if any(k < 1 for k in args.scales) or (args.val_copies is not None and args.val_copies < 1):
        p.error("--scales and --val_copies: each is at least 1")
    if (args.val_copies is not None or args.distinct_copies != 1) and not args.tiled:
        p.error("--val_copies and --distinct_copies need --tiled (an untiled corpus repeats both files)")
    if args.distinct_copies < 1:
        p.error("--distinct_copies: at least 1")
    check_out(args.out)
    return args


def build_corpus(root: Path, scale: int) -> Path:
    """<root>/x<scale>/ holding `scale` copies of the sample's train and validation files (V2 names)."""
    folder = root / f"x{scale}"
    folder.mkdir(parents=True, exist_ok=True)
    sample = Path(resolve_path(SAMPLE))
    for name, v2_name in FILES.items():
        target = folder / v2_name
        if not target.exists() or target.stat().st_size != scale * (sample / name).stat().st_size:
            with target.open("wb") as out:
                for _ in range(scale):
                    with (sample / name).open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
    return folder


def tokenize(corpus: str, cache: str, queue) -> None:
    """In a child process: train the BPE and write the token files (data/tokens.py); put the time on `queue`."""
    start = time.perf_counter()
    prepare_tokens(corpus, VOCAB, cache, tokenizer_sample=TOKENIZER_SAMPLE)
    queue.put({"tokenize_s": time.perf_counter() - start})


def tile(tokens: dict[str, np.ndarray], copies: dict[str, int], folder: Path, distinct: int = 1, eot: int = 0
         ) -> dict[str, np.ndarray]:
    """Each split's tokens written copies[split] times over into <folder>/tiled-x<copies>[-d<distinct>].<split>.bin,
    mapped. The training split's copies 1 .. distinct-1 have their ids relabelled, each by its own seeded
    permutation of every id but `eot`: new n-grams with the sample's statistics, so the stream holds about
    `distinct` times the sample's distinct trigrams (tables as large as on more varied text; its losses mean
    nothing)."""
    tiled = {}
    for split, array in tokens.items():
        scale, relabel = copies[split], distinct if split == "train" else 1
        path = folder / f"tiled-x{scale}{f'-d{relabel}' if relabel > 1 else ''}.{split}.bin"
        if not path.is_file() or path.stat().st_size != scale * array.nbytes:
            ids = np.arange(int(array.max()) + 1, dtype=array.dtype)
            with path.open("wb") as out:
                for copy in range(scale):
                    permutation = ids
                    if 0 < copy < relabel:
                        others = np.delete(ids, eot)
                        permutation = ids.copy()
                        permutation[others] = np.random.default_rng(copy).permutation(others)
                    out.write(np.ascontiguousarray(permutation[array]).tobytes())
        tiled[split] = np.memmap(path, dtype=array.dtype, mode="r")
    return tiled


def check_tiling(root: Path, cache: str, queue) -> None:
    """In a child process: tokenizing 2 copies of the sample must give the sample's tokens twice over (see the
    module docstring)."""
    _, one = prepare_tokens(str(build_corpus(root, 1)), VOCAB, cache, tokenizer_sample=TOKENIZER_SAMPLE)
    _, two = prepare_tokens(str(build_corpus(root, 2)), VOCAB, cache, tokenizer_sample=TOKENIZER_SAMPLE)
    for split in one:
        if not np.array_equal(two[split], np.tile(one[split], 2)):
            queue.put({"equal": False, "split": split})
            return
    queue.put({"equal": True})


def fit_and_score(corpus: str, cache: str, copies: dict | None, queue) -> None:
    """In a child process: map the cached tokens (tiled, with --tiled: copies per split), fit, score; put the
    timings and losses on `queue`."""
    tokenizer, tokens = prepare_tokens(corpus, VOCAB, cache, tokenizer_sample=TOKENIZER_SAMPLE)
    if copies:
        distinct = copies.pop("distinct", 1)
        tokens = tile(tokens, copies, Path(cache), distinct, eot_id(tokenizer))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports and the token maps
    start = time.perf_counter()
    result = ngram.baselines(tokens, tokenizer)
    queue.put({"fit_score_s": time.perf_counter() - start,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_fit_mib": before,
               **{k: result[k] for k in (*ngram.ORDERS, "train_tokens", "validation_tokens")}})


def in_child(target, *args) -> dict:
    """Run target(*args, queue) in a fresh process (spawn) -> what it put on the queue. The parent stays small: a
    child's ru_maxrss starts from its parent's peak at the fork (Linux keeps it across exec)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def measure(root: Path, scale: int, val_copies: int | None, distinct: int = 1) -> dict:
    """One row: the corpus of `scale` copies tokenized, or (val_copies given: --tiled) the sample's tokens tiled
    `scale` times for training (`distinct` of them with their own ids, see `tile`) and `val_copies` times for
    validation; fitted and scored."""
    cache = str(root / "cache")
    tiled = val_copies is not None and scale > 1
    corpus = build_corpus(root, 1 if tiled else scale)
    tokenize_s = in_child(tokenize, str(corpus), cache)["tokenize_s"]
    tiling = {"train": scale, "validation": val_copies, "distinct": min(distinct, scale)} if tiled else None
    result = in_child(fit_and_score, str(corpus), cache, tiling)
    sample = {name: (Path(resolve_path(SAMPLE)) / name).stat().st_size for name in FILES}
    file_copies = {"train.txt": scale, "valid.txt": val_copies if tiled else scale}
    mb = sum(file_copies[name] * size for name, size in sample.items()) / 1e6
    row = {"scale": scale, "val_copies": file_copies["valid.txt"], "distinct": min(distinct, scale) if tiled else 1,
           "corpus_mb": round(mb, 1),
           "tokenize_s": "tiled" if tiled else round(tokenize_s, 1),
           "fit_score_s": round(result.pop("fit_score_s"), 2),
           "peak_rss_mib": round(result.pop("peak_rss_mib")),
           "rss_before_fit_mib": round(result.pop("rss_before_fit_mib")), **result}
    print(f"x{scale}: {mb:.0f} MB, {row['train_tokens']:,} training tokens, fit + score {row['fit_score_s']} s, "
          f"peak {row['peak_rss_mib']} MiB", flush=True)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"N-gram baselines (data/ngram.py) on k copies of the TinyStories sample, {VOCAB}-token BPE. "
             f"{meta['machine']}.", "",
             "| copies (train / val) | corpus MB | train tokens | val tokens | tokenize s | fit + score s | "
             "RSS before fit MiB | peak RSS MiB | unigram | bigram | trigram |", "|" + " --- |" * 11]
    for r in rows:
        losses = " | ".join(f"{r[o]['loss']:.3f}" for o in ngram.ORDERS)
        relabelled = f" ({r['distinct']} relabelled)" if r.get("distinct", 1) > 1 else ""
        lines.append(f"| {r['scale']}{relabelled} / {r['val_copies']} | {r['corpus_mb']} | {r['train_tokens']:,} | "
                     f"{r['validation_tokens']:,} | "
                     f"{r['tokenize_s']} | {r['fit_score_s']} | {r['rss_before_fit_mib']} | {r['peak_rss_mib']} | "
                     f"{losses} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    with user_errors_exit_2():
        if args.tiled:
            check = in_child(check_tiling, Path(args.root), str(Path(args.root) / "cache"))
            if not check["equal"]:
                raise SystemExit(f"--tiled: the {check['split']} tokens of 2 copies are not the sample's tiled twice; "
                                 "run without --tiled")
            print("--tiled: the tokens of 2 copies equal the sample's tiled twice", flush=True)
        rows = [measure(Path(args.root), k, (args.val_copies or k) if args.tiled else None, args.distinct_copies)
                for k in args.scales]
    meta = {"machine": cpu_name(), "vocab_size": VOCAB, "scales": args.scales, "chunk_tokens": ngram.CHUNK,
            "tiled": args.tiled, "distinct_copies": args.distinct_copies, "cpu_count": os.cpu_count()}
    write_outputs(Path(args.out), meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
