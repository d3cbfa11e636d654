"""``medsam train``: fine-tune on a folder of images and labels, guarded by held-out Dice.

    medsam train --images DIR --labels DIR --out CKPT [--mode decoder|full|lora] [--epochs N]
                 [--holdout FRACTION] [--lr LR] [--seed N] [--device DEV] [--force]

Images and labels pair by file name (same stem; the labels may add _labels/_masks). Prints the
held-out Dice before and after and whether the guard accepted. The checkpoint is written
(atomically) only when the held-out Dice improved, or with --force. Exit codes: 0 written,
2 bad input (nothing written), 3 refused by the guard (nothing written).
"""

from __future__ import annotations

import argparse
import sys

EXIT_REFUSED = 3


def register(sub) -> None:
    from .cli import add_model_options

    p = sub.add_parser(
        "train", help="fine-tune on a folder of images + labels (guarded by held-out Dice)",
        description=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", required=True, help="folder of images (TIFF, NIfTI, npz, PNG)")
    p.add_argument("--labels", required=True, help="folder of label images with the same file names")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt or .pth)")
    p.add_argument("--mode", choices=("decoder", "full", "lora"), default="decoder",
                   help="decoder: fast, mask decoder only (default); full: encoder + decoder (GPU); "
                        "lora: low-rank adapters in the encoder attention + decoder")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--holdout", type=float, default=0.25, help="fraction of objects held out (default 0.25)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: per mode)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="write the checkpoint even if held-out Dice got worse")
    add_model_options(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .cli import check_output, load_from_args, tqdm_progress
    from .data import make_training_data, read_folder_pairs, split_holdout
    from .training import TrainConfig, fit

    out = check_output(args.out, (".pt", ".pth"), "checkpoint", inputs=_input_files(args))
    config = TrainConfig(
        mode=args.mode, epochs=args.epochs, lr=args.lr, holdout=args.holdout,
        seed=args.seed, batch_size=args.batch_size, device=args.device, base_model=args.model,
        base_checkpoint=args.checkpoint,
    ).validate()
    data = make_training_data(read_folder_pairs(args.images, args.labels))
    train, heldout = split_holdout(data, config.holdout, config.seed)
    model = load_from_args(args)
    print(f"fine-tuning {model.spec.name} ({config.mode}) on {len(train)} objects from "
          f"{len(data.images)} image(s); {len(heldout)} held out", flush=True)
    update, close = tqdm_progress("training")
    try:
        result = fit(model, train, config, on_step=lambda s, t, loss, info: update(s, t), heldout=heldout)
    finally:
        close()
    accepted = result.dice_after > result.dice_before
    print(f"held-out Dice before: {result.dice_before:.4f}")
    print(f"held-out Dice after:  {result.dice_after:.4f}")
    print(f"guard: {'accepted' if accepted else 'refused'} "
          f"({result.steps} steps, {result.elapsed_s:.1f} s)")
    if not accepted and not args.force:
        print(f"no checkpoint written: the held-out Dice did not improve (use --force to write {out} anyway)",
              file=sys.stderr)
        return EXIT_REFUSED
    meta = {**result.meta, "round": 1, "accepted": accepted, "forced": bool(args.force and not accepted)}
    save_checkpoint(out, result.model, meta)
    print(f"wrote {out}  (load it with medsam_core.load_model({model.spec.name!r}, checkpoint=...))")
    return 0


def _input_files(args: argparse.Namespace) -> list:
    """Every file train reads (the base checkpoint, the images and labels): none may be the output."""
    from pathlib import Path

    files: list = [args.checkpoint]
    for folder in (args.images, args.labels):
        d = Path(folder).expanduser()
        if d.is_dir():
            files.extend(p for p in d.iterdir() if p.is_file())
    return files


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m medsam_core.cli_train ...``) with the same exit codes."""
    from .cli import main as cli_main

    return cli_main(["train", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
