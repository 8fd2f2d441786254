"""`python -m train.check.draw [BAND.json ...] --out docs/bands`: each measured band drawn alone into <out>/<name>.png
(train/check/plot.py: the seed mean, the seed range and mean -+ 2 sd per metric), titled with its seeds, date and
commit, and <out>/bands.md: a table of each band's headline metrics at its last step (mean, sd, seed range), with
its provenance. With no file named, every band in the repository's bands/ (an unmeasured one is listed, not drawn).
Exit code 2 with one line for a file that is not a band."""

from __future__ import annotations

from pathlib import Path

from train.check.bands import BANDS, MEASURED, read_band
from train.check.plot import PNG, plot_check
from train.cli import ArgumentParser, user_errors_exit_2
from train.rundir.paths import FileKind, check_output, starts_with

HEADLINE = ("val/loss", "val/bpb", "val/rewards/margins", "val/rewards/accuracies", "train/reward", "train/kl",
            "objective/kl")
DPI = 64  # small files for the repository's docs
TABLE = FileKind("a band table", starts_with(b"| band |"))


def summary(bands: list[tuple[Path, dict]]) -> str:
    """The Markdown table: per band and headline metric, the last step's mean, sd and seed range."""
    lines = ["| band | stage | seeds | metric | step | mean | sd | seed range | recorded |", "|" + " --- |" * 9]
    for path, band in bands:
        recorded = f"{band['date']}, commit {band['commit']}, {band['machine']}"
        if band["status"] != MEASURED:
            lines.append(f"| {path.stem} | {band['keys']['stage']} | | | | | | | {band['status']} |")
            continue
        names = [n for n in HEADLINE if n in band["metrics"]] or ["train/loss"]
        for name in names:
            m = band["metrics"][name]
            lines.append(f"| {path.stem} | {band['keys']['stage']} | {len(band['seeds'])} | {name} | {m['step'][-1]} | "
                         f"{m['mean'][-1]:.4f} | {m['sd'][-1]:.4f} | {m['min'][-1]:.4f}..{m['max'][-1]:.4f} | "
                         f"{recorded} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m train.check.draw", description=__doc__.split("\n\n")[0])
    parser.add_argument("bands", nargs="*", help="band files (default: every measured band in bands/)")
    parser.add_argument("--out", required=True, help="folder for the PNGs (a PNG of the same name is replaced)")
    args = parser.parse_args(argv)
    with user_errors_exit_2():
        paths = [Path(p) for p in args.bands] or sorted(BANDS.glob("*.json"))
        bands = [(path, read_band(path)) for path in paths]
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        for path, band in bands:
            if band["status"] != MEASURED:
                print(f"{path}: not measured yet, not drawn")
                continue
            out = check_output(folder / f"{path.stem}.png", PNG, force=True, inputs=[path])
            title = (f"{path.name}: {len(band['seeds'])} seeds, {band['date']}, commit {band['commit']}, "
                     f"{band['machine']}")
            plot_check(title, None, band["metrics"], out, dpi=DPI)
            print(f"{path} -> {out}")
        table = check_output(folder / "bands.md", TABLE, force=True, inputs=paths)
        table.write_text(summary(bands))
        print(f"table: {table}")


if __name__ == "__main__":
    main()
