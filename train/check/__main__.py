"""`python -m train.check --run runs/NAME` (`tinystack check runs/NAME`): is this run's loss normal?

Finds the run's band by its config.yaml (train/check/bands.py: the exact match on the keys that identify a
recipe, else the nearest measured band of the same stage, naming the keys that differ), prints one verdict per metric
(train/check/verdict.py) and draws the run over the band into RUN/check.png (or --out). Exit code 0 when the run
was checked, whatever the verdicts, and when no band matches (said plainly); 2 with one line for bad input (not
a run folder, an unreadable band file or metrics file).
"""

from __future__ import annotations

import sys
from pathlib import Path

from inputs.errors import InputError
from inputs.yaml import read_yaml
from train.check.bands import (
    BANDS,
    MEASURED,
    NEAR,
    match,
    read_band,
    read_bands,
    recipe_keys,
    run_curves,
    run_tokenizer,
)
from train.check.plot import PNG, plot_check
from train.check.verdict import judge, per_token, unigram_baseline
from train.cli import ArgumentParser, user_errors_exit_2
from train.rundir.paths import check_output, is_run_dir

RECORD = "python -m train.check.record --config FILE --seeds 0 1 2 3 4 --out bands/NAME.json"


def parse(argv: list[str] | None):
    parser = ArgumentParser(prog="python -m train.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="the run folder (or --run)")
    parser.add_argument("--run", help="the run folder")
    parser.add_argument("--band", help="compare with this band file (default: the best match in --bands)")
    parser.add_argument("--bands", default=str(BANDS), help="folder of band files (default: the repository's)")
    parser.add_argument("--out", help="the plot (default: RUN/check.png, replaced on each check)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out PNG")
    args = parser.parse_args(argv)
    if bool(args.run_dir) == bool(args.run):
        parser.error("give the run folder once: python -m train.check --run runs/NAME")
    return args


def describe(path: Path, band: dict, differ: list[str], keys: dict) -> str:
    """One line on the band: exact or nearest (with each differing key), its seeds and where it was measured."""
    seeds = " ".join(map(str, band.get("seeds", [])))
    origin = f"{len(band.get('seeds', []))} seeds ({seeds}), {band['date']}, {band['machine']}, commit {band['commit']}"
    if not differ:
        return f"band: {path} matches this run exactly; {origin}"
    changes = ", ".join(f"{k} (run {keys.get(k)}, band {band['keys'].get(k)})" for k in differ)
    return f"band: no exact match; nearest is {path}, which differs in {changes}; {origin}"


def check(run_dir: Path, bands: list[tuple[Path, dict]], out: Path) -> list[str]:
    """The report's lines for `run_dir` against the best of `bands`; the plot is written to `out`."""
    values = read_yaml(run_dir / "config.yaml", "run config", fix="give a run folder (runs/NAME)")
    curves = run_curves(run_dir)
    keys = recipe_keys(values, curves, run_tokenizer(run_dir))
    last = max((s for points in curves.values() for s in points), default=None)
    lines = [f"run: {run_dir} ({keys['stage']}, last logged step {last})"]
    found = match(keys, bands)
    if found is None:
        return [*lines, f"no band for this run: none of the same stage ({keys['stage']}) differs in at most {NEAR} "
                        f"keys; record one with: {RECORD} (see docs/is-my-loss-normal.md)"]
    path, band, differ = found
    path = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path  # bands/demo.json
    if band["status"] != MEASURED:
        return [*lines, f"band {path} matches this run but is not measured yet; measure it with: {band['command']}"]
    lines.append(describe(path, band, differ, keys))
    other_tokenizer = "tokenizer" in differ
    if other_tokenizer:
        lines.append("  another tokenizer than the band's: the same text is other tokens, so a loss in nats per token "
                     "is not comparable; judge by val/bpb (bits per byte of text)")
    unigram = unigram_baseline(curves)
    metrics = band["metrics"]
    width = max(map(len, metrics))
    for name, stats in metrics.items():
        verdict = judge(name, curves[name], stats, unigram) if curves.get(name) else None
        if verdict and other_tokenizer and per_token(name, keys["stage"]):
            verdict = f"not comparable (another tokenizer): {verdict}"
        lines.append(f"  {name:<{width}}  {verdict or 'not logged at the band steps'}")
    plot_check(f"{run_dir.name} against {path.name}", curves, metrics, out)
    lines.append(f"plot: {out}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with user_errors_exit_2():
        run_dir = Path(args.run or args.run_dir)
        if not run_dir.is_dir() or not is_run_dir(run_dir):
            raise InputError("not a run folder (no config.yaml beside a run's files)", run_dir,
                             fix="give a folder under runs/ that a training command wrote")
        bands = [(Path(args.band), read_band(Path(args.band)))] if args.band else read_bands(Path(args.bands))
        out = Path(args.out) if args.out else run_dir / "check.png"
        out = check_output(out, PNG, force=args.force or not args.out, inputs=[args.band], own=run_dir)
        print("\n".join(check(run_dir, bands, out)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
