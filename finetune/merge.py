"""`python -m finetune.merge --run runs/<lora run> --out DIR` (or `--run runs/<base> --adapter DIR --out DIR`).

Folds a LoRA adapter into the base weights, W' = W + (alpha / r) B A for every adapted Linear (Hu et al. 2021,
§4.1: no extra inference cost), and writes a plain, self-contained run directory

    DIR/config.yaml  DIR/tokenizer.json  DIR/model.safetensors

that `python -m train.generate --run DIR` samples from and `python -m train.interop.export_hf` exports.
"""

from __future__ import annotations

from pathlib import Path

from data.tokens import content_hash
from finetune.config import read_run_config
from model.lora import merge_lora
from train.cli import ArgumentParser, user_errors_exit_2
from train.config import save_config
from train.rundir.adapter import resolve
from train.rundir.load import load_run
from train.rundir.paths import check_output
from train.rundir.weights import CheckpointError, save_weights


def merge_run(run: str | Path, out: str | Path, adapter: str | Path | None = None, own: Path | None = None) -> Path:
    """Write the merged run `out` (a new or empty folder outside every run folder but `own`: the run writing its
    own reference/, align/policy.py)."""
    weights_dir, adapter_dir = resolve(run, adapter)
    if adapter_dir is None:
        raise CheckpointError(f"{run} is not a LoRA run directory (no adapter/ without model.safetensors); "
                              "pass a LoRA run or --adapter DIR")
    out = check_output(out, None, inputs=(run, weights_dir, adapter_dir), own=own)
    cfg, tokenizer, model = load_run(weights_dir, "cpu", adapter_dir)
    merge_lora(model)
    source = Path(run) if (Path(run) / "config.yaml").is_file() else weights_dir  # the LoRA run's: how the
    cfg = read_run_config(source)  # weights were made (finetune.* included)
    cfg.finetune.base = cfg.finetune.base or str(weights_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tokenizer.save(str(out / "tokenizer.json"))
    save_weights(model, out / "model.safetensors", tied=cfg.model.tie_embeddings,
                 tokenizer_hash=content_hash(tokenizer.to_str()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a LoRA run directory, or the base run with --adapter")
    parser.add_argument("--adapter", default=None, help="adapter directory (adapter_config.json + weights)")
    parser.add_argument("--out", required=True, help="the merged run directory to write")
    args = parser.parse_args(argv)
    with user_errors_exit_2():
        print(f"merged: {merge_run(args.run, args.out, args.adapter)}")


if __name__ == "__main__":
    main()
