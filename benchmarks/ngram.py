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
Writes <out>.json and <out>.md (default runs/benchmarks/ngram).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from benchmarks.common import RESULTS, check_out, cpu_name, write_outputs  # noqa: E402
from data import ngram  # noqa: E402
from data.sources import SAMPLE, resolve_path  # noqa: E402
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
    args = p.parse_args(argv)
    if any(k < 1 for k in args.scales):
        p.error("--scales: each scale is at least 1")
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


def fit_and_score(corpus: str, cache: str, queue) -> None:
    """In a child process: map the cached tokens, fit, score; put the timings and losses on `queue`."""
    tokenizer, tokens = prepare_tokens(corpus, VOCAB, cache, tokenizer_sample=TOKENIZER_SAMPLE)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports and the token maps
    start = time.perf_counter()
    result = ngram.baselines(tokens, tokenizer)
    queue.put({"fit_score_s": time.perf_counter() - start,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_fit_mib": before,
               **{k: result[k] for k in (*ngram.ORDERS, "train_tokens",
                                                                                        "validation_tokens")}})


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


def measure(root: Path, scale: int) -> dict:
    corpus, cache = build_corpus(root, scale), str(root / "cache")
    tokenize_s = in_child(tokenize, str(corpus), cache)["tokenize_s"]
    result = in_child(fit_and_score, str(corpus), cache)
    mb = sum(p.stat().st_size for p in corpus.iterdir()) / 1e6
    row = {"scale": scale, "corpus_mb": round(mb, 1), "tokenize_s": round(tokenize_s, 1),
           "fit_score_s": round(result.pop("fit_score_s"), 2),
           "peak_rss_mib": round(result.pop("peak_rss_mib")),
           "rss_before_fit_mib": round(result.pop("rss_before_fit_mib")), **result}
    print(f"x{scale}: {mb:.0f} MB, {row['train_tokens']:,} training tokens, fit + score {row['fit_score_s']} s, "
          f"peak {row['peak_rss_mib']} MiB", flush=True)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"N-gram baselines (data/ngram.py) on k copies of the TinyStories sample, {VOCAB}-token BPE. "
             f"{meta['machine']}.", "",
             "| copies | corpus MB | train tokens | val tokens | tokenize s | fit + score s | RSS before fit MiB | "
             "peak RSS MiB | "
             "unigram | bigram | trigram |", "|" + " --- |" * 11]
    for r in rows:
        losses = " | ".join(f"{r[o]['loss']:.3f}" for o in ngram.ORDERS)
        lines.append(f"| {r['scale']} | {r['corpus_mb']} | {r['train_tokens']:,} | {r['validation_tokens']:,} | "
                     f"{r['tokenize_s']} | {r['fit_score_s']} | {r['rss_before_fit_mib']} | {r['peak_rss_mib']} | "
                     f"{losses} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    with user_errors_exit_2():
        rows = [measure(Path(args.root), k) for k in args.scales]
    meta = {"machine": cpu_name(), "vocab_size": VOCAB, "scales": args.scales, "chunk_tokens": ngram.CHUNK}
    write_outputs(Path(args.out), meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
