"""The baseline's `mmrs` commands: train, predict, evaluate (and publishing checkpoints).

`mmrs` finds them through the `mmrs.commands` entry points, so the pipeline never imports
the baseline. Registering imports nothing heavy; a command imports torch when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class MissingExtra(ValueError):
    """The baseline's extra is not installed."""


def _needs_baseline():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(
            f"this command needs the baseline's extra ({exc.name} is missing): "
            "pip install 'mmrs[baseline]'"
        ) from None


def cmd_train(args: argparse.Namespace) -> int:
    _needs_baseline()
    from .prs_med.presets import parse_override, resolve
    from .prs_med.train import TrainConfig, train

    overrides = dict(parse_override(text) for text in args.set)
    for name in ("batch_size", "lr", "epochs", "num_workers"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    for name in ("max_steps", "batch_size", "epochs", "val_every", "val_rows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    preset = resolve(args.preset, overrides)
    config = TrainConfig(
        dataset=Path(args.dataset),
        out=Path(args.out),
        preset=preset,
        seed=args.seed,
        max_steps=args.max_steps,
        device=args.device,
        resume=args.resume,
        val_every=args.val_every,
        val_rows=args.val_rows,
        balance=args.balance,
        progress=not args.quiet,
    )
    try:
        summary = train(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with `mmrs train ... --out {args.out} --resume`")
        return 130
    print(json.dumps(summary, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _needs_baseline()
    from .prs_med.predict import predict_image

    result = predict_image(args.checkpoint, args.image, args.question, args.out, args.device)
    print(result["answer"])
    if result["mask"]:
        print(f"mask: {result['mask']}\noverlay: {result['overlay']}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _needs_baseline()
    from .evaluate import evaluate, parse_system

    for name in ("batch_size", "overlays"):
        if getattr(args, name) < (1 if name == "batch_size" else 0):
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    summary = evaluate(
        args.dataset,
        [parse_system(text) for text in args.system],
        args.out,
        split=args.split,
        seed=args.seed,
        batch_size=args.batch_size,
        workers=args.num_workers,
        device=args.device,
        overlays=args.overlays,
        progress=not args.quiet,
    )
    print((Path(args.out) / "metrics.md").read_text())
    print(f"metrics.json, metrics.md, plots/, overlays/, scores/: {summary['out']}")
    return 0


def _publish_checkpoints_too(publish: argparse.ArgumentParser) -> None:
    """`mmrs publish` uploads a checkpoint folder as a model repository; a build folder
    goes on to the dataset command as before."""
    publish_build = publish.get_default("func")

    def cmd_publish(args: argparse.Namespace) -> int:
        folder = Path(args.folder)
        if (folder / "manifest.json").is_file() or not (folder / "config.json").is_file():
            return publish_build(args)
        _needs_baseline()
        from .prs_med.card import publish_checkpoint

        files = publish_checkpoint(folder, args.repo_id, args.private, args.revision, args.dry_run)
        where = args.repo_id + (f"@{args.revision}" if args.revision else "")
        print(f"{'would upload' if args.dry_run else 'uploaded'} to {where} (model):")
        for name in files:
            print(f"  {name}")
        return 0

    publish.set_defaults(func=cmd_publish)
    publish.description = "Upload a build folder (dataset) or a checkpoint folder (model)."


def register(commands: argparse._SubParsersAction) -> None:
    """Add train, predict and evaluate to `mmrs`'s subcommands."""
    from .prs_med.presets import PRESETS

    t = commands.add_parser(
        "train",
        help="train the PRS-Med-style baseline on a build folder",
        description="Train a baseline preset on the folder `mmrs build` wrote. Multi-GPU: "
        "`accelerate launch -m pipeline.cli train ...` or `torchrun --nproc-per-node N -m "
        "pipeline.cli train ...`.",
    )
    t.add_argument("dataset", help="an MMRS build folder (train and validation splits)")
    t.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="default tiny")
    t.add_argument("--out", required=True, help="run folder: best/, last/, log.jsonl")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps (default: --epochs)")
    length.add_argument("--epochs", type=int, help="epochs over the training split")
    t.add_argument("--batch-size", type=int, help="rows per step and device")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--seed", type=int, default=0, help="seed of init and data order (0)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--val-every", type=int, metavar="STEPS", help="validate every N steps")
    t.add_argument("--val-rows", type=int, default=512, help="validation rows scored (default 512)")
    t.add_argument("--balance", action="store_true", help="draw modalities equally often")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field (JSON values), e.g. --set encoder=./medsam",
    )
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    p = commands.add_parser("predict", help="segment and answer with a trained checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder (e.g. runs/tiny/best)")
    p.add_argument("image", help="an image file")
    p.add_argument("--question", required=True, help='e.g. "Where is the polyp?"')
    p.add_argument("--out", help="write <image>_mask.png and <image>_overlay.png here")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=cmd_predict)

    e = commands.add_parser(
        "evaluate", help="score checkpoints and reference systems side by side on a split"
    )
    e.add_argument("dataset", help="an MMRS build folder")
    e.add_argument(
        "--system",
        action="append",
        required=True,
        metavar="NAME[=CHECKPOINT]",
        help="`prior`, or a name and a checkpoint folder (any preset, mask-only too); repeatable",
    )
    e.add_argument("--split", default="test", help="default test")
    e.add_argument("--out", default="evaluation", help="report folder (default ./evaluation)")
    e.add_argument("--seed", type=int, default=0, help="bootstrap and overlay sample (0)")
    e.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    e.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--overlays", type=int, default=12, help="overlay PNGs per system (12)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_evaluate)

    if "publish" in commands.choices:
        _publish_checkpoints_too(commands.choices["publish"])
