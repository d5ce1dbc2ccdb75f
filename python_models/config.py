"""Default recipes and model construction shared by ``python -m python_models.train`` and
``python -m python_models.evaluate`` (a checkpoint stores its config, so evaluation rebuilds
the same model)."""

import argparse

from .cuhs import CUHS, TOPK
from .fg_video import FGVideoNet

# CUHS (Xu et al. 2023, Sec. 5.1): 384×128, batch 64 = 16 ids × 4 images, Adam (β = 0.9, 0.999,
# weight decay 5e-4) at 3e-4, divided by 10 at epochs 40 and 70 of 90, after 50 epochs of the
# HSL L2 stage; CE + batch-hard triplet (margin 0.3) on each of the four features; c = 1536.
CUHS_RECIPE = dict(height=384, width=128, p=16, k=4, optimizer="adam", lr=3e-4, weight_decay=5e-4,
                   milestones=[40, 70], gamma=0.1, epochs=90, hsl_epochs=50, margin=0.3, feat_dim=1536)
# FG video model (Yin et al. 2020, Sec. 5.1): 224×224 segments of 10 frames, Δt = 5, SGD at 0.01
# (0.001 for the motion-attentive stream), batch of 50 in the paper (here P × K segments),
# the sum of the four streams' CE losses (its final, joint stage; the staged pretraining is not
# reproduced).
FG_VIDEO_RECIPE = dict(height=224, width=224, p=16, k=2, optimizer="sgd", lr=0.01, ma_lr=0.001, weight_decay=5e-4,
                       milestones=[30, 40], gamma=0.1, epochs=50, hsl_epochs=0, seq_len=10, delta_t=5)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=["cuhs", "fg_video"], default=None,
                   help="default: cuhs for image datasets, fg_video for mars/fgpr")
    g.add_argument("--feat-dim", type=int, default=None, help="CUHS c (1536)")
    g.add_argument("--topk", type=int, default=None, help="CUHS top-k (default per dataset: 45 Market, 20 Duke, else 5)")
    g.add_argument("--backbone-width", type=int, default=64, help="ResNet stem width (64 = ResNet-50)")
    g.add_argument("--backbone-layers", type=int, nargs=4, default=[3, 4, 6, 3])
    g.add_argument("--last-stride", type=int, default=1, help="CUHS layer4 stride")
    g.add_argument("--seq-len", type=int, default=None, help="video: frames per segment (10)")
    g.add_argument("--delta-t", type=int, default=None, help="video: frame gap of the motion stream (5)")
    g.add_argument("--part-size", type=int, default=224, help="video: side of the joint-specific part crops")
    g.add_argument("--mask-size", type=int, nargs=2, default=[7, 7], help="video: size of the LSTM masks")
    g.add_argument("--no-joints", action="store_true", help="video: no joint-specific stream (no keypoints, e.g. MARS)")


def recipe(model: str) -> dict:
    return dict(CUHS_RECIPE if model == "cuhs" else FG_VIDEO_RECIPE)


def build_model(cfg: dict, num_classes: int):
    """The model named by cfg["model"] for num_classes training identities."""
    common = dict(width=cfg["backbone_width"], layers=tuple(cfg["backbone_layers"]))
    if cfg["model"] == "cuhs":
        topk = cfg["topk"] if cfg.get("topk") is not None else TOPK.get(cfg.get("dataset"), 5)
        return CUHS(num_classes, feat_dim=cfg["feat_dim"], topk=topk, last_stride=cfg["last_stride"], **common)
    return FGVideoNet(num_classes, delta_t=cfg["delta_t"], joint_stream=not cfg["no_joints"],
                      part_size=cfg["part_size"], mask_size=tuple(cfg["mask_size"]), **common)


def resolve(cfg: dict) -> dict:
    """Fill the model default from the dataset and None options from the model's recipe."""
    from .datasets import VIDEO_DATASETS

    cfg = dict(cfg)
    video = cfg["dataset"] in VIDEO_DATASETS
    if cfg.get("model") is None:
        cfg["model"] = "fg_video" if video else "cuhs"
    if (cfg["model"] == "fg_video") != video:
        raise ValueError(f"model {cfg['model']!r} does not read dataset {cfg['dataset']!r}: "
                         f"fg_video takes {list(VIDEO_DATASETS)}, cuhs the image datasets")
    for key, value in recipe(cfg["model"]).items():
        if cfg.get(key) is None:
            cfg[key] = value
    if cfg["model"] == "cuhs" and cfg.get("feat_dim") is None:
        cfg["feat_dim"] = 1536
    return cfg
