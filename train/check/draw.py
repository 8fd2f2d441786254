"""`python -m train.check.draw [BAND.json ...] --out docs/bands`: each measured band drawn alone into <out>/<name>.png
(train/check/plot.py: the seed mean, the seed range and mean -+ 2 sd per metric), titled with its seeds, date and
commit; with no file named, every measured band in the repository's bands/. Exit code 2 with one line for a file
that is not a band."""

from __future__ import annotations

from pathlib import Path

from train.check.bands import BANDS, MEASURED, read_band
from train.check.plot import PNG, plot_check
from train.cli import ArgumentParser, user_errors_exit_2
from train.rundir.paths import check_output


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
            plot_check(title, None, band["metrics"], out)
            print(f"{path} -> {out}")


if __name__ == "__main__":
    main()
