"""Train CUHS (image datasets) or the FG video model (MARS / FGPR).

    python -m python_models.train --dataset market1501 --root /data/Market-1501-v15.09.15 \\
        --pretrained /weights/resnet50-0676ba61.pth --output runs/cuhs-market

Defaults are CUHS's recipe (python_models.config.CUHS_RECIPE): 384×128, P×K = 16×4, Adam 3e-4
(weight decay 5e-4) divided by 10 at epochs 40 and 70 of 90, CE + batch-hard triplet (margin
0.3) on each of the four features, after a first stage of ``--hsl-epochs`` (50) that trains
the head-shoulder box with the L2 loss (eq. 15) on the images listed in
``<root>/head_shoulder_boxes.txt`` and then freezes it. Without that file the first stage is
skipped and the box is learned end to end (like an STN). The video model uses
FG_VIDEO_RECIPE. Checkpoints: ``<output>/last.pt`` every epoch (``--resume`` continues from it),
``<output>/epoch<N>.pt`` every ``--save-every`` epochs; evaluation every ``--eval-every`` epochs
and at the end.

Several processes (docs/distributed.md): ``torchrun --nproc_per_node=N -m python_models.train ...``
trains with DistributedDataParallel (NCCL on CUDA, gloo on CPU). ``--p`` and ``--k`` are per rank:
each step the N ranks draw N·P distinct identities together and rank r takes the r-th P of them,
the triplet loss mines every rank's anchors against all N·P·K images, and DDP averages the
gradients, so N ranks × P equal one process with N·P at the same learning rate (exactly with
``--sync-bn``). Checkpoints, logs, progress bars and result.json come from rank 0; ``--resume``
loads ``<output>/last.pt`` on every rank (a shared folder across nodes).
"""

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

import fgreid_ops

from . import launch as launcher
from .config import add_model_args, build_model, resolve
from .cuhs import CUHS, cuhs_loss, hsl_loss, parameter_report
from .datasets import ImageDataset, PKSampler, SegmentDataset, load_dataset
from .evaluate import evaluate_model, format_metrics, tqdm
from .fg_video import fg_video_loss
from .transforms import ImageTransform, SegmentTransform
from .visualize import write_curves

EXAMPLES = """example (a few steps on CPU, to try the pipeline):
  fgreid-train --dataset market1501 --root /data/Market-1501-v15.09.15 --output runs/try \\
      --epochs 1 --hsl-epochs 0 --max-steps 5 --device cpu
  (the same as: python -m python_models.train --dataset market1501 ...)
Beside the checkpoints: result.json (loss per step and its terms, every evaluation) and
curves.png (loss terms per step, metrics per evaluation)."""


def parse_args(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=EXAMPLES)
    parser.add_argument("--dataset", required=True, choices=["market1501", "dukemtmc", "msmt17", "mars", "fgpr"])
    parser.add_argument("--root", required=True, help="dataset folder (see python_models.datasets for layouts)")
    parser.add_argument("--output", default="runs/model", help="checkpoint folder")
    parser.add_argument("--pretrained", default=None, help="torchvision resnet50 state_dict (.pth) to start from")
    parser.add_argument("--resume", action="store_true", help="continue from <output>/last.pt")
    parser.add_argument("--split", type=int, default=0, help="FGPR split seed")
    add_model_args(parser)
    g = parser.add_argument_group("recipe (default: the model's paper recipe)")
    for flag, kind in [("--epochs", int), ("--hsl-epochs", int), ("--lr", float), ("--weight-decay", float),
                       ("--gamma", float), ("--height", int), ("--width", int), ("--p", int), ("--k", int),
                       ("--margin", float)]:
        g.add_argument(flag, type=kind, default=None)
    g.add_argument("--milestones", type=int, nargs="*", default=None)
    g.add_argument("--optimizer", choices=["adam", "sgd"], default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps per stage (smoke runs)")
    parser.add_argument("--eval-every", type=int, default=10, help="epochs between evaluations (0: only at the end)")
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--reference", action="store_true", help="route every op to its plain-PyTorch reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sync-bn", action="store_true", help="under torchrun: batch norm statistics over all ranks")
    return resolve(vars(parser.parse_args(argv)))


def make_optimizer(model, cfg, params=None):
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if cfg["model"] == "fg_video":
        ma = {id(p) for m in (model.phi, model.lstm, model.mask_head, model.classifiers["ma"]) for p in m.parameters()}
        groups = [{"params": [p for p in params if id(p) not in ma]},
                  {"params": [p for p in params if id(p) in ma], "lr": cfg.get("ma_lr", cfg["lr"])}]
    else:
        groups = [{"params": params}]
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(groups, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])


def train_loader(data, cfg, samples=None):
    samples = samples if samples is not None else data.train
    if cfg["model"] == "fg_video":
        ds = SegmentDataset(samples, SegmentTransform(cfg["height"], cfg["width"], train=True), cfg["seq_len"])
    else:
        ds = ImageDataset(samples, ImageTransform(cfg["height"], cfg["width"], train=True), data.boxes)
    world = fgreid_ops.distributed.world_size()
    sampler = PKSampler([s.pid for s in samples], cfg["p"] * world, cfg["k"], seed=cfg["seed"])
    if world > 1:
        sampler = RankBatches(sampler, fgreid_ops.distributed.rank(), world)
    return DataLoader(ds, batch_sampler=sampler, num_workers=cfg["workers"],
                      pin_memory=cfg["device"].startswith("cuda"), persistent_workers=cfg["workers"] > 0)


class RankBatches:
    """This rank's part of a batch sampler shared by all ranks: every rank draws the same global
    batch (same seed) and takes the r-th of `world` equal slices (P×K: its own P identities)."""

    def __init__(self, sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            n = len(batch) // self.world
            yield batch[self.rank * n:(self.rank + 1) * n]


def wrap(model, cfg, find_unused=False):
    """What a stage runs: DistributedDataParallel over the ranks (when there are several), then
    torch.compile when asked."""
    runner = model
    if fgreid_ops.distributed.world_size() > 1:
        device_ids = [torch.device(cfg["device"]).index] if cfg["device"].startswith("cuda") else None
        runner = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                           find_unused_parameters=find_unused)
    return torch.compile(runner) if cfg["compile"] else runner


def broadcast_buffers(model):
    """Rank 0's buffers (batch norm running statistics) on every rank. DDP broadcasts them before
    each forward, so after a step every rank holds its own; the checkpoint is rank 0's, and the
    sharded evaluation must see one model."""
    if fgreid_ops.distributed.world_size() > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def save(path, model, cfg, num_classes, **state):
    if fgreid_ops.distributed.rank() != 0:
        return
    raw = getattr(model, "_orig_mod", model)
    tmp = path + ".tmp"
    torch.save({"model": raw.state_dict(), "config": cfg, "num_classes": num_classes, **state}, tmp)
    os.replace(tmp, path)


def run_epoch(model, loader, optimizer, cfg, stage, epoch, step_budget, history, terms=None):
    """One pass over `loader`; appends each step's loss to `history` (and its terms to `terms`);
    returns steps done."""
    model.train()
    device = cfg["device"]
    world = fgreid_ops.distributed.world_size()
    bar = tqdm(loader, desc=f"{stage} epoch {epoch + 1}", leave=False, file=sys.stderr,
               disable=fgreid_ops.distributed.rank() != 0)
    if hasattr(loader, "batch_sampler") and hasattr(loader.batch_sampler, "set_epoch"):
        loader.batch_sampler.set_epoch(epoch)
    steps = 0
    for batch in bar:
        if step_budget is not None and steps >= step_budget:
            break
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=cfg["amp"]):
            if cfg["model"] == "fg_video":
                x, kp, pids = batch[0].to(device), batch[1].to(device), batch[2].to(device)
                out = model(x, None if cfg["no_joints"] else kp)
                loss, parts = fg_video_loss(out, pids)
            else:
                x, pids, boxes = batch[0].to(device), batch[1].to(device), batch[3].to(device)
                out = model(x)
                if stage == "hsl":
                    loss, parts = hsl_loss(out["boxes"].float(), boxes), {}
                else:
                    loss, parts = cuhs_loss(out, pids, cfg["margin"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss = loss.detach()
        if world > 1:  # the loss of the whole step: the mean over ranks
            loss = loss.clone()
            torch.distributed.all_reduce(loss)
            loss /= world
        history.append(float(loss))
        if terms is not None:
            terms.append({k: float(v) for k, v in (parts or {"box L2": loss}).items()})
        steps += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(loss):.3f}", **{k: f"{float(v):.3f}" for k, v in parts.items()})
    return steps


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    launch = launcher.start(cfg["device"])
    cfg["device"] = launch.device
    torch.manual_seed(cfg["seed"])
    os.makedirs(cfg["output"], exist_ok=True)
    data = load_dataset(cfg["dataset"], cfg["root"], split=cfg["split"])
    launch.log(data.summary())
    num_classes = data.num_train_pids
    model = build_model(cfg, num_classes)
    if cfg["pretrained"]:
        sd = torch.load(cfg["pretrained"], map_location="cpu", weights_only=True)
        if isinstance(model, CUHS):
            model.load_backbone(sd)
        else:
            model.backbone.load_torchvision(sd)
    if isinstance(model, CUHS):
        rep = parameter_report(model)
        launch.log(f"CUHS: {rep['parameters']:,} parameters = {rep['MB']:.1f} MB float32 (paper: 342.3 MB)")
    if cfg["sync_bn"] and launch.distributed:  # torch's fused kernels on CUDA; CPU tensors need ours
        convert = (torch.nn.SyncBatchNorm if cfg["device"].startswith("cuda") else fgreid_ops.distributed)
        model = convert.convert_sync_batchnorm(model)
    model.to(cfg["device"])
    if launch.distributed:  # the same initial weights everywhere, each rank its own augmentations
        torch.manual_seed(cfg["seed"] + launch.rank)

    last = os.path.join(cfg["output"], "last.pt")
    state = {"stage": "hsl", "epoch": 0}
    ckpt = None
    if cfg["resume"] and os.path.isfile(last):
        ckpt = torch.load(last, map_location=cfg["device"], weights_only=False)
        model.load_state_dict(ckpt["model"])
        state = {"stage": ckpt["stage"], "epoch": ckpt["epoch"]}
        launch.log(f"resumed from {last}: stage {state['stage']}, epoch {state['epoch']}")

    history = {"hsl": [], "main": []}
    loss_terms = {"hsl": [], "main": []}
    evaluations = []
    metrics = None
    with fgreid_ops.use_reference(cfg["reference"]):
        # Stage 1 (CUHS): the head-shoulder box alone, on the images that have a box.
        boxed = [s for s in data.train if os.path.basename(getattr(s, "path", "")) in data.boxes]
        if state["stage"] == "hsl":
            enough = len({s.pid for s in boxed}) >= cfg["p"] * launch.world  # P identities per rank
            if isinstance(model, CUHS) and cfg["hsl_epochs"] > 0 and enough:
                loader = train_loader(data, cfg, boxed)
                opt = make_optimizer(model, cfg)
                if ckpt is not None and "optimizer" in ckpt:
                    opt.load_state_dict(ckpt["optimizer"])
                runner = wrap(model, cfg, find_unused=True)  # the box loss leaves most weights unused
                for epoch in range(state["epoch"], cfg["hsl_epochs"]):
                    run_epoch(runner, loader, opt, cfg, "hsl", epoch, cfg["max_steps"], history["hsl"], loss_terms["hsl"])
                    save(last, model, cfg, num_classes, stage="hsl", epoch=epoch + 1, optimizer=opt.state_dict())
            elif isinstance(model, CUHS) and cfg["hsl_epochs"] > 0:
                launch.log("no head_shoulder_boxes.txt (or too few boxed identities): HSL stage skipped, "
                           "the box is learned end to end")
            state = {"stage": "main", "epoch": 0}
            ckpt = None
        if isinstance(model, CUHS) and cfg["hsl_epochs"] > 0 and boxed:
            model.freeze_hsl()

        # Stage 2: the full objective (eq. 14 for CUHS; sum of the streams' CE for the video model).
        loader = train_loader(data, cfg)
        runner = wrap(model, cfg)
        opt = make_optimizer(model, cfg)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg["milestones"], cfg["gamma"])
        if ckpt is not None:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        for epoch in range(state["epoch"], cfg["epochs"]):
            start = time.time()
            before = len(history["main"])
            run_epoch(runner, loader, opt, cfg, "train", epoch, cfg["max_steps"], history["main"], loss_terms["main"])
            sched.step()
            recent = history["main"][before:]
            launch.log(f"epoch {epoch + 1}/{cfg['epochs']}: loss {sum(recent) / max(1, len(recent)):.4f}, "
                       f"lr {opt.param_groups[0]['lr']:.2e}, {time.time() - start:.0f} s")
            extra = dict(stage="main", epoch=epoch + 1, optimizer=opt.state_dict(), scheduler=sched.state_dict())
            save(last, model, cfg, num_classes, **extra)
            if cfg["save_every"] and (epoch + 1) % cfg["save_every"] == 0:
                save(os.path.join(cfg["output"], f"epoch{epoch + 1}.pt"), model, cfg, num_classes, **extra)
            final = epoch + 1 == cfg["epochs"]
            if not cfg["no_eval"] and (final or (cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0)):
                broadcast_buffers(model)
                metrics = evaluate_model(model, data, cfg, cfg["device"], workers=cfg["workers"])
                evaluations.append({"epoch": epoch + 1, "step": len(history["main"]), "metrics": metrics})
                launch.log(f"epoch {epoch + 1} {data.name}: " + format_metrics(metrics))
    result = {"history": history, "loss_terms": loss_terms, "evaluations": evaluations, "metrics": metrics,
              "checkpoint": last}
    launcher.finish(launch)
    if not launch.main:
        return result
    with open(os.path.join(cfg["output"], "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_curves(result, os.path.join(cfg["output"], "curves.png"))
    return result


if __name__ == "__main__":
    main()
