"""The training loop: BCE + Dice on the final logits, AdamW with per-iteration cosine
decay, seeds, bf16 autocast on CUDA, atomic resumable checkpoints with the config embedded,
best-model selection, CSV logs, and DDP via torchrun (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..build import build_dcsam
from ..checkpoints import load_checkpoint, save_checkpoint
from ..config import SegmenterConfig
from ..data import build_dataset
from ..data.base import IGNORE
from ..engines.dcsam_engine import save_prompt_generator
from ..metrics import DatasetIoU
from ..modeling import DCSAM, QueryFeatures, SupportFeatures
from .config import TrainConfig
from .losses import bce_dice_loss

log = logging.getLogger(__name__)
TRAINING_KIND = "dcsam-training"


# -- distributed helpers ------------------------------------------------------------------------
def dist_setup() -> tuple[int, int, torch.device]:
    """Join the torchrun process group if there is one. Returns (rank, world size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# -- features --------------------------------------------------------------------------------------
class FeatureEncoder:
    """Runs the frozen encoders on a batch, optionally caching each item's features by key."""

    def __init__(self, model: DCSAM, device: torch.device, cache: bool) -> None:
        self.model, self.device = model, device
        self.cache: dict[str, tuple[QueryFeatures, SupportFeatures]] | None = {} if cache else None

    @torch.no_grad()
    def _encode(self, batch: dict) -> tuple[QueryFeatures, SupportFeatures]:
        q = batch["query_image"].to(self.device)
        s = batch["support_images"].to(self.device)
        m = batch["support_masks"].to(self.device)
        query = self.model.encode_query(q)
        support = self.model.encode_support(s.flatten(0, 1), m.flatten(0, 1).unsqueeze(1))
        return query, support

    def __call__(self, batch: dict) -> tuple[QueryFeatures, SupportFeatures]:
        if self.cache is None:
            return self._encode(batch)
        keys = list(batch["key"])
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            sub = {k: (v[missing] if torch.is_tensor(v) else [v[i] for i in missing]) for k, v in batch.items()}
            query, support = self._encode(sub)
            shots = batch["support_images"].shape[1]
            for j, i in enumerate(missing):
                self.cache[keys[i]] = (query.select(slice(j, j + 1)), support.select(slice(j * shots, (j + 1) * shots)))
        items = [self.cache[k] for k in keys]
        return QueryFeatures.cat([q for q, _ in items]), SupportFeatures.cat([s for _, s in items])


class TrainForward(nn.Module):
    """The trainable computation as one module, so DDP can wrap it."""

    def __init__(self, model: DCSAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, query: QueryFeatures, support: SupportFeatures, target: torch.Tensor):
        out = self.model.forward_features(query, support)
        return bce_dice_loss(out["logits"].float(), target), out["logits"]


# Parts of SAM's mask decoder that stay frozen when it trains: the IoU and object-score heads
# (no loss reaches them) and SAM 2's conv_s0/conv_s1, which run inside the frozen image encoding.
FROZEN_DECODER_PARTS = ("iou_prediction_head", "pred_obj_score_head", "conv_s0", "conv_s1")


def trainable_modules(model: DCSAM, train_sam_decoder: bool) -> None:
    """Freeze everything but the prompt generator (and optionally SAM's mask decoder)."""
    model.requires_grad_(False)
    model.generator.requires_grad_(True)
    if train_sam_decoder:
        if model.sam.family == "sam1":
            raise ValueError("train_sam_decoder is supported with SAM 2 models (their decoder uses every mask token)")
        for name, p in model.sam.mask_decoder.named_parameters():
            p.requires_grad_(not name.startswith(FROZEN_DECODER_PARTS))


def trainable_state(model: DCSAM) -> dict[str, torch.Tensor]:
    """Every trained tensor: the generator's state plus any unfrozen SAM decoder parameters."""
    state = {f"generator.{k}": v for k, v in model.generator.state_dict().items()}
    state.update({n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
    return state


def load_trainable_state(model: DCSAM, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        from ..errors import CheckpointError

        raise CheckpointError(f"training checkpoint does not fit this model: unknown keys {unknown[:3]}")
    model.load_state_dict(state, strict=False)


# -- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_fewshot(
    model: DCSAM,
    dataset,
    *,
    episodes: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    encoder: FeatureEncoder | None = None,
    progress: bool = False,
) -> dict:
    """A few-shot dataset split (:mod:`dcsam.data`) by the paper's protocol: a fixed-seed sample of
    ``episodes`` episodes (cycling through the list), masks compared at the model's resolution,
    ignore pixels left out, accumulated mIoU over classes and FB-IoU (:class:`dcsam.metrics.DatasetIoU`).
    Sharded over ranks. Returns miou, fb_iou, class_iou (by class id) and episodes."""
    model.eval()
    encoder = encoder or FeatureEncoder(model, device, cache=False)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g).tolist()
    indices = [order[i % len(order)] for i in range(episodes)][rank::world]
    score = DatasetIoU()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    for start in tqdm(
        range(0, len(indices), batch_size), desc="evaluating", disable=not progress or rank != 0, leave=False
    ):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        batch = torch.utils.data.default_collate(items)
        query, support = encoder(batch)
        with autocast:
            logits = model.forward_features(query, support)["logits"]
        preds, targets = (logits[:, 0] > 0).cpu().numpy(), batch["query_mask"].numpy()
        for pred, target, class_id in zip(preds, targets, batch["class_id"].tolist()):
            score.add(pred, target == 1, int(class_id), valid=target != IGNORE)
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, score)
        score = DatasetIoU()
        for part in gathered:
            score.merge(part)
    summary = score.summary()
    return {
        "miou": summary["miou"],
        "fb_iou": summary["fb_iou"],
        "class_iou": dict(sorted(summary["class_iou"].items())),
        "episodes": score.count,
    }


# -- training --------------------------------------------------------------------------------------
def _write_rows(path: Path, header: list[str], rows: list[list], keep_until_step: int | None = None) -> None:
    """Append rows to a CSV log; on resume, first drop rows past the resumed step."""
    if keep_until_step is not None and path.exists():
        with open(path) as fh:
            kept = [r for r in csv.reader(fh)][1:]
        kept = [r for r in kept if int(r[0]) <= keep_until_step]
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *kept])
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(header)
        w.writerows(rows)


def train(
    config: TrainConfig, *, resume: bool = False, max_steps: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train a prompt generator. ``max_steps`` stops early (the schedule still spans all epochs)."""
    rank, world, device = dist_setup()
    out = Path(config.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    model_cfg = SegmenterConfig.from_dict({**config.model, "engine": "dcsam"})
    model = build_dcsam(model_cfg).to(device)
    trainable_modules(model, config.train_sam_decoder)
    params = [p for p in model.parameters() if p.requires_grad]
    forward = TrainForward(model)
    ddp = DistributedDataParallel(forward, broadcast_buffers=False) if world > 1 else forward

    train_set = build_dataset(config.dataset, "train")
    val_set = build_dataset(config.val_dataset or config.dataset, "val")
    sampler: DistributedSampler[dict] = DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=True
    )
    # The loader gets its own generator so that it never draws from the global RNG (dropout's):
    # resuming then reproduces the same random stream as an uninterrupted run.
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        drop_last=True,
        persistent_workers=config.num_workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    iters = min(len(loader), config.iters_per_epoch or len(loader))
    total = iters * config.epochs
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    encoder = FeatureEncoder(model, device, config.cache_features)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    step, best, history = 0, -1.0, []
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path, TRAINING_KIND)
        load_trainable_state(model, ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, best = ckpt["step"], ckpt["best_miou"]
        torch.set_rng_state(ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0])
        log.info("resumed from %s at step %d", last_path, step)
    elif resume:
        log.info("nothing to resume in %s; starting fresh", out)

    def save(epoch: int) -> None:
        rng: list[Any] = [torch.get_rng_state()]
        if world > 1:
            rng = [None] * world
            dist.all_gather_object(rng, torch.get_rng_state())
        if rank == 0:
            save_checkpoint(
                last_path,
                TRAINING_KIND,
                trainable_state(model),
                config.to_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                step=step,
                epoch=epoch,
                best_miou=best,
                rng=rng,
            )

    if rank == 0:
        _write_rows(out / "log.csv", ["step", "epoch", "loss", "lr", "seconds"], [], keep_until_step=step)
    stop_at = min(total, max_steps) if max_steps is not None else total
    bar = tqdm(total=total, initial=step, desc="training", disable=not progress or rank != 0, unit="it")
    while step < stop_at:
        epoch = step // iters
        sampler.set_epoch(epoch)
        model.generator.train()
        rows = []
        for i, batch in enumerate(loader):
            if i >= iters or step >= stop_at:
                break
            if i < step - epoch * iters:  # resuming mid-epoch: skip what was already seen
                continue
            t0 = time.perf_counter()
            query, support = encoder(batch)
            with autocast:
                loss, _ = ddp(query, support, batch["query_mask"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            rows.append(
                [step, epoch, f"{value:.8f}", f"{scheduler.get_last_lr()[0]:.8e}", f"{time.perf_counter() - t0:.3f}"]
            )
            history.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if config.save_every and step % config.save_every == 0:
                save(epoch)
        if rank == 0:
            _write_rows(out / "log.csv", [], rows)
        epoch_done = step % iters == 0
        if epoch_done and ((step // iters) % config.val_every == 0 or step == total):
            summary = evaluate_fewshot(
                model,
                val_set,
                episodes=config.val_episodes,
                seed=config.val_seed,
                batch_size=config.batch_size,
                device=device,
                encoder=encoder if config.cache_features else None,
            )
            miou = summary["miou"]
            if rank == 0:
                _write_rows(
                    out / "val.csv",
                    ["step", "epoch", "miou", "fb_iou"],
                    [[step, epoch, f"{miou:.6f}", f"{summary['fb_iou']:.6f}"]],
                )
                log.info("epoch %d: val mIoU %.4f FB-IoU %.4f", epoch, miou, summary["fb_iou"])
                if miou > best:
                    best = miou
                    save_prompt_generator(best_path, model, model_cfg, miou=miou, step=step)
        save(step // iters)
        _barrier()
    bar.close()
    return {"step": step, "best_miou": best, "losses": history, "out_dir": str(out)}
