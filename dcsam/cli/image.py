"""``dcsam model-info``, ``dcsam predict`` and ``dcsam eval``: image segmentation from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ..errors import DcsamError
from .model_args import add_model_args, model_config

log = logging.getLogger("dcsam")


def add_parsers(sub) -> None:
    p = sub.add_parser("model-info", help="parameter counts of a DC-SAM configuration")
    # The paper's configuration by default: the counts are compared with the paper's table.
    p.add_argument("--sam", default="vit_h")
    p.add_argument("--backbone", default="resnet50_v2")
    p.add_argument("--variant", choices=["full", "prior_only"], default="full")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("predict", help="segment query images given labelled examples")
    add_model_args(p)
    p.add_argument("--example", action="append", required=True, help="example image (repeat for K shots)")
    p.add_argument("--example-mask", action="append", required=True, help="mask of the example (same order)")
    p.add_argument("--label", default="object")
    p.add_argument("--out", required=True, help="output folder: <query>.png mask and <query>.json scores")
    p.add_argument("queries", nargs="+")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="score an engine on an episodes file")
    add_model_args(p)
    p.add_argument("--episodes", help="JSON list of {support: [...], query: [...]} episodes")
    p.add_argument(
        "--finetune-on", type=int, default=0, metavar="K", help="fine-tune on the first K queries of each episode first"
    )
    p.add_argument("--benchmark", choices=["coco20i", "pascal5i"], help="paper protocol on a standard benchmark")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--checkpoint", help="trained prompt generator (with --benchmark)")
    p.add_argument("--data-root", help="dataset root (with --benchmark; layouts in the README)")
    p.add_argument("--num-episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=321)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_model_info(args: argparse.Namespace) -> int:
    from ..build import build_dcsam, parameter_counts
    from ..config import SegmenterConfig

    cfg = SegmenterConfig(engine="dcsam", sam=args.sam, backbone=args.backbone, variant=args.variant)
    counts = parameter_counts(build_dcsam(cfg, meta=True))
    info = {"sam": args.sam, "backbone": args.backbone, "variant": args.variant, **counts}
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>18}: {v:,}" if isinstance(v, int) else f"{k:>18}: {v}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..api import InContextSegmenter
    from ..io import atomic_write_bytes, write_mask_png

    if len(args.example) != len(args.example_mask):
        raise DcsamError(
            f"{len(args.example)} --example but {len(args.example_mask)} --example-mask; give them in pairs"
        )
    seg = InContextSegmenter.from_config(model_config(args))
    log.info("engine %s, model version %s", seg.engine.name, seg.version)
    seg.add_examples(args.example, args.example_mask, label=args.label)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for query in tqdm(args.queries, desc="predicting", unit="image", disable=not sys.stderr.isatty()):
        t0 = time.perf_counter()
        [pred] = seg.predict([query])
        record = {
            "image": str(query),
            "engine": seg.engine.name,
            "model_version": seg.version,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        stem = Path(query).stem
        if pred.error:
            failures += 1
            record["error"] = pred.error
        else:
            mask = pred.masks[args.label]
            write_mask_png(out / f"{stem}.png", mask)
            record.update(
                label=args.label,
                score=pred.scores[args.label],
                width=mask.shape[1],
                height=mask.shape[0],
                area=int(mask.sum()),
            )
        atomic_write_bytes(out / f"{stem}.json", (json.dumps(record, indent=2) + "\n").encode())
        print(json.dumps(record))
    return 1 if failures else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..api import InContextSegmenter
    from ..episode_evaluation import evaluate_episodes, format_report, load_episodes

    if bool(args.episodes) == bool(args.benchmark):
        raise DcsamError("give either --episodes FILE or --benchmark coco20i|pascal5i")
    if args.benchmark:
        return _eval_benchmark(args)
    cfg = model_config(args)
    report = evaluate_episodes(
        lambda: InContextSegmenter.from_config(cfg),
        load_episodes(args.episodes),
        finetune_on=args.finetune_on,
        progress=not args.json,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _eval_benchmark(args: argparse.Namespace) -> int:
    from ..build import build_dcsam
    from ..checkpoints import load_checkpoint
    from ..config import SegmenterConfig
    from ..data import build_dataset
    from ..engines.dcsam_engine import ARCH_SETTINGS, PROMPT_GENERATOR_KIND
    from ..training.trainer import dist_setup, evaluate_fewshot
    from ..weights import load_strict

    if not args.checkpoint or not args.data_root:
        raise DcsamError("--benchmark needs --checkpoint (a trained prompt generator) and --data-root")
    ckpt = load_checkpoint(args.checkpoint, PROMPT_GENERATOR_KIND)
    settings = {k: ckpt["settings"][k] for k in (*ARCH_SETTINGS, "neg_stage2_source") if k in ckpt["settings"]}
    _, _, device = dist_setup()
    # The architecture is the checkpoint's, whatever --sam / --backbone say; only the weights' sources come from flags.
    cfg = SegmenterConfig(
        engine="dcsam",
        sam_checkpoint=args.sam_checkpoint,
        backbone_weights=args.backbone_weights,
        allow_download=not args.offline,
        **settings,
    )
    model = build_dcsam(cfg).to(device).eval()
    load_strict(model.generator, ckpt["state_dict"], source=args.checkpoint)
    dataset = build_dataset(
        {"name": args.benchmark, "root": args.data_root, "fold": args.fold, "shots": args.shots}, "val"
    )
    summary = evaluate_fewshot(
        model,
        dataset,
        progress=True,
        episodes=args.num_episodes,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
    )
    report = {
        "benchmark": args.benchmark,
        "fold": args.fold,
        "shots": args.shots,
        "checkpoint": args.checkpoint,
        **summary,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.benchmark} fold {args.fold}, {args.shots}-shot, {summary['episodes']} episodes")
        for c, iou in summary["class_iou"].items():
            print(f"  class {c:>3}: IoU {iou:.4f}")
        print(f"  mIoU {summary['miou']:.4f}   FB-IoU {summary['fb_iou']:.4f}")
    return 0
