"""`python -m train.evals.evaluate --run runs/<name> --tasks tinystories_next[,t2,...]`: lm-evaluation-harness tasks on
any run directory of this stack (every mixer; the model class is train/evals/lm_eval_model.py).

Prints a Markdown table of the metrics and writes lm_eval's results as JSON to
`<run>/lm_eval_<task>+<task>.json` (or --out FILE.json: never inside an input or a run folder, and an existing
file only with --force when it holds lm-eval results, train/rundir/paths.py `check_output`). Options: --limit N
(docs per task; a fraction < 1 is a share), --batch-size B, --num-fewshot K, --device auto|cpu|cuda, --adapter
DIR (LoRA), --max-seq-len N and --rolling-overlap N (scoring windows, see train/evals/lm_eval_model.py), --data-dir
DIR (the data of this repository's tasks; default: the run's data.path, resolved as training resolves it,
data/sources.py), --seed S.

Tasks: this repository's, in train/evals/tasks/ (`tinystories_next`: offline, built from the held-out stories;
no network needed), and lm_eval's own (hellaswag, lambada_openai, ...), which download their data from the hub.
When every task asked for is one of ours, lm_eval's ~15k task configs are not indexed (10 s saved).
Needs the `eval` extra: pip install -e ".[eval]".
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from data.sources import resolve_path
from train.cli import USER_ERRORS, ArgumentParser, user_errors_exit_2
from train.config import ConfigError, load_config
from train.generate.flags import check_flags
from train.rundir.paths import FileKind, check_output, json_object

TASKS_DIR = Path(__file__).parent / "tasks"
INSTALL = 'pip install -e ".[eval]"'


def parse_args(argv: list[str] | None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory (runs/<name>)")
    parser.add_argument("--tasks", required=True, help="comma-separated lm_eval task names")
    parser.add_argument("--limit", type=float, default=None, help="docs per task (testing); < 1: a share")
    parser.add_argument("--out", default=None, help="results JSON file (default: in the run directory)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    parser.add_argument("--num-fewshot", "--num_fewshot", dest="num_fewshot", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--adapter", default=None, help="LoRA adapter directory")
    parser.add_argument("--max-seq-len", "--max_seq_len", dest="max_seq_len", type=int, default=None,
                        help="scoring window (default: the model's max_seq_len)")
    parser.add_argument("--rolling-overlap", "--rolling_overlap", dest="rolling_overlap", type=int, default=0)
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                        help="data for tinystories_next: a directory, file or tinystories-sample "
                             "(default: the run's data.path)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace --out if it holds earlier lm-eval results")
    return parser.parse_args(argv)


def task_names(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tasks is empty; give task names, e.g. --tasks tinystories_next")
    return names


RESULTS = FileKind("an lm-eval results file (JSON with results and config)",
                   json_object(lambda d: {"results", "config"} <= set(d)))


def output_path(args, run_dir: Path, tasks: list[str]) -> Path:
    """The results file: the run's own lm_eval_<tasks>.json, or --out (`check_output`: an existing file only with
    --force and only if it holds lm-eval results; never inside an input or a run folder)."""
    if args.out is None:
        return run_dir / f"lm_eval_{'+'.join(Path(t).stem for t in tasks)}.json"
    out = Path(args.out)
    if out.suffix != ".json":
        raise ConfigError(f"--out {out}: give a .json file name (e.g. --out results/{run_dir.name}.json)")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a .json file name inside it")
    if out.parent.exists() and not out.parent.is_dir():
        raise ConfigError(f"--out {out}: {out.parent} is not a directory")
    return check_output(out, RESULTS, args.force, inputs=(run_dir, args.adapter))  # never into a run folder


def local_tasks() -> list[str]:
    return sorted(p.name for p in TASKS_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def task_manager(tasks: list[str], metadata: dict):
    """A TaskManager that knows this repository's tasks (and lm_eval's, unless every task is ours); an unknown
    name is a ConfigError naming what exists."""
    from lm_eval.tasks import TaskManager

    ours = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
    if all(t in ours.all_tasks for t in tasks):
        return ours
    manager = TaskManager(include_path=str(TASKS_DIR), metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        raise ConfigError(f"unknown task {', '.join(map(repr, unknown))}; this repository's: "
                          f"{', '.join(ours.all_tasks)}; lm_eval's: `lm-eval ls tasks`")
    return manager


class _Quiet(logging.Filter):
    """Drop lm_eval's note, printed once per task with a custom dataset, about passing kwargs by --metadata."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def evaluate(args) -> tuple[dict, Path]:
    import lm_eval

    from train.evals.lm_eval_model import TinystackLM

    run_dir = Path(args.run)
    tasks = task_names(args.tasks)
    check_flags(args, "seed")
    out = output_path(args, run_dir, tasks)
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit {args.limit:g} must be positive (a count, or a share below 1)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be at least 1")
    if args.data_dir and not Path(resolve_path(args.data_dir)).expanduser().exists():
        raise ConfigError(f"--data-dir {args.data_dir} not found; point it at a local TinyStories copy")
    try:
        lm = TinystackLM(run=run_dir, device=args.device, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                         rolling_overlap=args.rolling_overlap, adapter=args.adapter, seed=args.seed,
                         progress=True)
    except ValueError as err:
        if isinstance(err, USER_ERRORS):
            raise
        raise ConfigError(str(err)) from None
    data = args.data_dir or load_config(run_dir / "config.yaml", run_file=True).data.path
    manager = task_manager(tasks, {"data_dir": data})
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                      num_fewshot=args.num_fewshot, log_samples=False, random_seed=args.seed,
                                      bootstrap_iters=1000)
    results["config"].update(model="tinystack", batch_size=args.batch_size, device=str(lm.device),
                             data_dir=resolve_path(data),
                             model_args={"run": str(run_dir), "adapter": args.adapter, "max_seq_len": lm.max_length,
                                         "rolling_overlap": lm.rolling_overlap})
    return results, out


def write_json(results: dict, out: Path) -> None:
    from lm_eval.utils import handle_non_serializable

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print(f"error: lm-evaluation-harness is not installed; {INSTALL}", file=sys.stderr)
        sys.exit(2)
    from lm_eval.utils import make_table

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval.api.task").addFilter(_Quiet())
    try:
        with user_errors_exit_2():
            results, out = evaluate(args)
    except ConnectionError as err:  # a hub task without network (datasets raises the builtin)
        print(f"error: {err}; lm_eval's tasks download their data from the hub, this repository's "
              f"({', '.join(local_tasks())}) run offline", file=sys.stderr)
        sys.exit(2)
    write_json(results, out)
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
