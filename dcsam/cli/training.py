"""``dcsam train`` and ``dcsam convert-reference``: prompt-generator training and checkpoint conversion."""

from __future__ import annotations

import argparse
import json

from ..errors import DcsamError


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a DC-SAM prompt generator (run under torchrun for several GPUs)")
    p.add_argument("--config", metavar="FILE", help="JSON or YAML training configuration")
    p.add_argument("--preset", help="named configuration, e.g. pascal5i-fold0-r50-sam or tiny-synthetic-cpu")
    p.add_argument("--data-root", metavar="DIR", help="dataset root (sets dataset.root)")
    p.add_argument("--out", metavar="DIR", help="run folder (sets out_dir)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set lr=1e-4 --set dataset.fold=2",
    )
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule still spans every epoch)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("convert-reference", help="convert a checkpoint trained with the reference DC-SAM scripts")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--sam", help="base model it was trained with (default: inferred, vit_h or sam2.1_hiera_l)")
    p.add_argument("--backbone", help="prior backbone (default: inferred from the channel count)")
    p.set_defaults(func=cmd_convert_reference)


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig
    from ..training.presets import preset
    from ..training.trainer import train

    if bool(args.config) == bool(args.preset):
        raise DcsamError("give either --config FILE or --preset NAME")
    config = TrainConfig.from_file(args.config) if args.config else preset(args.preset)
    sets = list(args.set or [])
    if args.data_root:
        sets.append(f"dataset.root={args.data_root}")
    if args.out:
        sets.append(f"out_dir={args.out}")
    config = config.with_overrides(sets)
    result = train(config, resume=args.resume, max_steps=args.max_steps)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}))
    return 0


def cmd_convert_reference(args: argparse.Namespace) -> int:
    from ..training.convert import convert_reference

    settings = convert_reference(args.checkpoint, args.out, sam=args.sam, backbone=args.backbone)
    print(json.dumps({"written": args.out, **settings}))
    return 0
