"""The ``dcsam`` command line: model-info, predict, eval."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import DcsamError

log = logging.getLogger("dcsam")


def _add_model_args(p: argparse.ArgumentParser, engine_default: str = "lite") -> None:
    env = os.environ.get
    p.add_argument("--engine", choices=["lite", "dcsam"], default=env("DCSAM_ENGINE", engine_default))
    p.add_argument("--sam", default=env("DCSAM_SAM", "sam2.1_hiera_t"), help="base model: vit_b|vit_l|vit_h|sam2.1_hiera_{t,s,b+,l}|sam2_hiera_*")
    p.add_argument("--sam-checkpoint", default=env("DCSAM_SAM_CHECKPOINT"), help="official SAM / SAM 2 checkpoint file")
    p.add_argument("--backbone", default=env("DCSAM_BACKBONE", "efficientnet_lite0"), help="resnet50_v2|resnet50|vgg16_bn|efficientnet_lite0")
    p.add_argument("--backbone-weights", default=env("DCSAM_BACKBONE_WEIGHTS"))
    p.add_argument("--variant", choices=["full", "prior_only"], default="full")
    p.add_argument("--neg-stage2-source", choices=["query_neg", "support_pos_release"], default="query_neg",
                   help="negative branch stage-2 keys: our default, or the reference release's behaviour")
    p.add_argument("--prompt-generator", default=env("DCSAM_PROMPT_GENERATOR"), help="trained prompt-generator checkpoint (default: training-free cold start)")
    p.add_argument("--random-weights", choices=["sam", "backbone", "all"], help="use random weights for these parts (testing only)")
    p.add_argument("--device", default=env("DCSAM_DEVICE", "auto"))
    p.add_argument("--offline", action="store_true", help="never download weights")


def _config(args: argparse.Namespace, **extra):
    from .config import SegmenterConfig

    rnd = args.random_weights or ""
    return SegmenterConfig(
        engine=args.engine, sam=args.sam, sam_checkpoint=args.sam_checkpoint, backbone=args.backbone,
        backbone_weights=args.backbone_weights, variant=args.variant, prompt_generator=args.prompt_generator,
        neg_stage2_source=args.neg_stage2_source,
        random_sam_weights=rnd in ("sam", "all"), random_backbone_weights=rnd in ("backbone", "all"),
        allow_download=not args.offline, device=args.device, **extra,
    )


def cmd_model_info(args: argparse.Namespace) -> int:
    from .build import build_dcsam, parameter_counts
    from .config import SegmenterConfig

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

    from .api import InContextSegmenter
    from .io import atomic_write_bytes, write_mask_png

    if len(args.example) != len(args.example_mask):
        raise DcsamError(f"{len(args.example)} --example but {len(args.example_mask)} --example-mask; give them in pairs")
    seg = InContextSegmenter.from_config(_config(args))
    log.info("engine %s, model version %s", seg.engine.name, seg.version)
    seg.add_examples(args.example, args.example_mask, label=args.label)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for query in tqdm(args.queries, desc="predicting", unit="image", disable=not sys.stderr.isatty()):
        t0 = time.perf_counter()
        [pred] = seg.predict([query])
        record = {"image": str(query), "engine": seg.engine.name, "model_version": seg.version, "seconds": round(time.perf_counter() - t0, 3)}
        stem = Path(query).stem
        if pred.error:
            failures += 1
            record["error"] = pred.error
        else:
            mask = pred.masks[args.label]
            write_mask_png(out / f"{stem}.png", mask)
            record.update(label=args.label, score=pred.scores[args.label], width=mask.shape[1], height=mask.shape[0], area=int(mask.sum()))
        atomic_write_bytes(out / f"{stem}.json", (json.dumps(record, indent=2) + "\n").encode())
        print(json.dumps(record))
    return 1 if failures else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import InContextSegmenter
    from .evaluation import evaluate_episodes, format_report, load_episodes

    if bool(args.episodes) == bool(args.benchmark):
        raise DcsamError("give either --episodes FILE or --benchmark coco20i|pascal5i")
    if args.benchmark:
        return _eval_benchmark(args)
    cfg = _config(args)
    report = evaluate_episodes(
        lambda: InContextSegmenter.from_config(cfg), load_episodes(args.episodes),
        finetune_on=args.finetune_on, progress=not args.json,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _eval_benchmark(args: argparse.Namespace) -> int:
    from .build import build_dcsam
    from .checkpoints import load_checkpoint
    from .config import SegmenterConfig
    from .data import build_dataset
    from .engines.dcsam_engine import ARCH_SETTINGS, PROMPT_GENERATOR_KIND
    from .training.trainer import dist_setup, evaluate
    from .weights import load_strict

    if not args.checkpoint or not args.data_root:
        raise DcsamError("--benchmark needs --checkpoint (a trained prompt generator) and --data-root")
    ckpt = load_checkpoint(args.checkpoint, PROMPT_GENERATOR_KIND)
    settings = {k: ckpt["settings"][k] for k in (*ARCH_SETTINGS, "neg_stage2_source") if k in ckpt["settings"]}
    _, _, device = dist_setup()
    cfg = SegmenterConfig(engine="dcsam", sam_checkpoint=args.sam_checkpoint, backbone_weights=args.backbone_weights,
                          allow_download=not args.offline, **settings)
    model = build_dcsam(cfg).to(device).eval()
    load_strict(model.generator, ckpt["state_dict"], source=args.checkpoint)
    dataset = build_dataset({"name": args.benchmark, "root": args.data_root, "fold": args.fold, "shots": args.shots}, "val")
    summary = evaluate(model, dataset, episodes=args.num_episodes, seed=args.seed, batch_size=args.batch_size, device=device, progress=True)
    report = {"benchmark": args.benchmark, "fold": args.fold, "shots": args.shots, "checkpoint": args.checkpoint, **summary}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.benchmark} fold {args.fold}, {args.shots}-shot, {summary['episodes']} episodes")
        for c, iou in summary["class_iou"].items():
            print(f"  class {c:>3}: IoU {iou:.4f}")
        print(f"  mIoU {summary['miou']:.4f}   FB-IoU {summary['fb_iou']:.4f}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.config import TrainConfig
    from .training.presets import preset
    from .training.trainer import train

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
    from .training.convert import convert_reference

    settings = convert_reference(args.checkpoint, args.out, sam=args.sam, backbone=args.backbone)
    print(json.dumps({"written": args.out, **settings}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.serve import main as serve_main

    return serve_main(args.serve_args)


def cmd_preannotate(args: argparse.Namespace) -> int:
    from backend.cli_preannotate import main as preannotate_main

    return preannotate_main(args.serve_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcsam", description="In-context segmentation: label one image, segment the rest.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model-info", help="parameter counts of a DC-SAM configuration")
    p.add_argument("--sam", default="vit_h")
    p.add_argument("--backbone", default="resnet50_v2")
    p.add_argument("--variant", choices=["full", "prior_only"], default="full")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("predict", help="segment query images given labelled examples")
    _add_model_args(p)
    p.add_argument("--example", action="append", required=True, help="example image (repeat for K shots)")
    p.add_argument("--example-mask", action="append", required=True, help="mask of the example (same order)")
    p.add_argument("--label", default="object")
    p.add_argument("--out", required=True, help="output folder: <query>.png mask and <query>.json scores")
    p.add_argument("queries", nargs="+")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="score an engine on an episodes file")
    _add_model_args(p)
    p.add_argument("--episodes", help="JSON list of {support: [...], query: [...]} episodes")
    p.add_argument("--finetune-on", type=int, default=0, metavar="K", help="fine-tune on the first K queries of each episode first")
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

    p = sub.add_parser("train", help="train a DC-SAM prompt generator (run under torchrun for several GPUs)")
    p.add_argument("--config", help="JSON or YAML training configuration")
    p.add_argument("--preset", help="named configuration, e.g. pascal5i-fold0-r50-sam or tiny-synthetic-cpu")
    p.add_argument("--data-root", help="dataset root (sets dataset.root)")
    p.add_argument("--out", help="run folder (sets out_dir)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. --set lr=1e-4 --set dataset.fold=2")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule still spans every epoch)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("convert-reference", help="convert a checkpoint trained with the reference DC-SAM scripts")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--sam", help="base model it was trained with (default: inferred, vit_h or sam2.1_hiera_l)")
    p.add_argument("--backbone", help="prior backbone (default: inferred from the channel count)")
    p.set_defaults(func=cmd_convert_reference)

    p = sub.add_parser("serve", help="run the Label Studio ML backend (gunicorn); configured by environment variables")
    p.set_defaults(func=cmd_serve, serve_args=[])

    # its options (--project ID, --backend URL, ...) are parsed by backend.cli_preannotate
    p = sub.add_parser("preannotate", add_help=False,
                       help="pre-annotate a whole Label Studio project in a running backend, with a progress bar")
    p.set_defaults(func=cmd_preannotate, serve_args=[])

    from .bench import add_parser as add_bench_parser

    add_bench_parser(sub)

    from .video.cli import add_parser as add_eval_video_parser  # dcsam eval-video (J, F, J&F of videos)

    add_eval_video_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    passthrough = ("serve", "preannotate")  # their own parsers take the rest (e.g. --port 9091, --project 3)
    if extra and args.command not in passthrough:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in passthrough:
        args.serve_args = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (DcsamError, ValueError) as exc:
        print(f"dcsam: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
