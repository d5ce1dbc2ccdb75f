"""The fine-grained video re-id network of Yin, Wu and Zheng (IJCV 2020), SPEC §7.

Input: segments x [N, T, 3, H, W] (T = 10 frames at 224×224 in the paper) and, for the
joint-specific stream, keypoints [N, T, 16, 2] — (x, y) in [0, 1] image coordinates, a negative
value marks a joint that was not found. No pose estimator is bundled: keypoints come from the
dataset (see ``python_models.datasets.FGPR``).

    frames ─ ResNet-50 (shared) ─ 5 levels f_g1 … f_g5 per frame
      global appearance stream:  GAP(f_g5), averaged over frames                      → global
      motion stream:             OFF(f_gi[t], f_gi[t+Δt]) at each level (Δt = 5),
                                 1×1 conv → f_mi;  concat_i GAP(f_mi), mean over pairs → motion
      motion-attentive stream:   ϕ_i(f_mi) → LSTM over the 5 levels → masks m_i (eq. 1),
                                 m'_i = α m_i + (1−α) m_f (eq. 2, α = 0.2),
                                 o_i = GAP(s(m'_i) ⊙ f_gi)  (eq. 3, mask_upsample_mul(pool=True)),
                                 concat_i o_i, mean over pairs                          → ma
      joint-specific stream:     4 part crops (head, torso, both arms side by side, legs)
                                 from the keypoints, each its own 5-conv CNN (FG-FN),
                                 fused by 2 convs (FG-ULN), mean over frames           → js
    distance (eq. 4): Dis = ‖Δglobal‖ + (‖Δma‖ + ‖Δjs‖) + ‖Δmotion‖   (``fg_distance``)

Choices the paper leaves open, written down here:
- One ResNet-50 serves both the appearance and the motion stream: the motion stream "took the
  global appearance feature maps as input" (Sec. 5.1, as OFF units do in Sun et al.); its own
  layers are a 1×1 conv + BN + ReLU per level (3C → C) on the OFF of that level.
- The 5 levels are res_conv1 (after ReLU, before the max-pool), layer1 … layer4.
- Frame pairs are (t, t+Δt) inside the segment (T − Δt pairs); the mask of pair (t, t+Δt)
  localizes frame t's appearance maps ("each input segment of the appearance stream is
  corresponding to the segment of the motion stream of the same time step").
- ϕ_i = adaptive average pool to ``mask_size`` (7×7) + 1×1 conv to ``mask_channels``; one LSTM
  (shared over the 5 steps) of ``lstm_hidden`` units, a linear head to mask_size and a sigmoid.
  The LSTM is written out (LSTMCell equations) so torch.compile traces it without a graph break.
- Part boxes: bounding box of the part's joints, padded by ``part_margin`` (fraction of the
  image) and at least ``part_min`` wide/high; a part with no visible joint falls back to a fixed
  box (``FALLBACK``). Arms: the left- and right-arm crops, each half as wide, side by side.
- FG-FN per part: 5 × (3×3 conv stride 2, BN, ReLU) + global average pool; FG-ULN: 1×1 conv
  + BN + ReLU, then a 1×1 conv to ``js_dim``.
"""

import torch
import torch.nn.functional as F
from torch import nn

import fgreid_ops

from .cuhs import scale_translate_grid
from .resnet import ResNet

# Keypoint order of the paper (Sec. 4.2).
JOINTS = ("head", "neck", "left_eye", "right_eye", "right_shoulder", "right_elbow", "right_wrist",
          "left_shoulder", "left_elbow", "left_wrist", "left_hip", "left_knee", "left_ankle",
          "right_hip", "right_knee", "right_ankle")
PARTS = {
    "head": (0, 1, 2, 3),
    "torso": (1, 4, 7, 10, 13),
    "left_arm": (7, 8, 9),
    "right_arm": (4, 5, 6),
    "legs": (10, 11, 12, 13, 14, 15),
}
FALLBACK = {  # (x0, y0, x1, y1) in [0, 1] for a part whose joints are all missing
    "head": (0.25, 0.0, 0.75, 0.2),
    "torso": (0.15, 0.15, 0.85, 0.6),
    "left_arm": (0.5, 0.15, 1.0, 0.65),
    "right_arm": (0.0, 0.15, 0.5, 0.65),
    "legs": (0.1, 0.5, 0.9, 1.0),
}
# Index map that mirrors the skeleton under a horizontal flip (left ↔ right).
FLIP_JOINTS = (0, 1, 3, 2, 7, 8, 9, 4, 5, 6, 13, 14, 15, 10, 11, 12)


class LSTMCell(nn.Module):
    """i, f, g, o = W_ih x + b_ih + W_hh h + b_hh;  c' = σ(f) c + σ(i) tanh(g);  h' = σ(o) tanh(c')."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size)
        self.hidden_size = hidden_size

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def part_boxes(keypoints: torch.Tensor, margin: float = 0.05, min_size: float = 0.1) -> dict:
    """Boxes (x0, y0, x1, y1) in [0, 1], [B, 4] per part, from keypoints [B, 16, 2]."""
    valid = (keypoints >= 0).all(dim=-1)  # [B, 16]
    boxes = {}
    for name, joints in PARTS.items():
        kp, ok = keypoints[:, joints], valid[:, joints, None]
        lo = torch.where(ok, kp, torch.full_like(kp, float("inf"))).amin(dim=1) - margin
        hi = torch.where(ok, kp, torch.full_like(kp, float("-inf"))).amax(dim=1) + margin
        centre, half = (lo + hi) / 2, ((hi - lo) / 2).clamp(min=min_size / 2)
        box = torch.cat([centre - half, centre + half], dim=1)
        fallback = torch.tensor(FALLBACK[name], dtype=keypoints.dtype, device=keypoints.device).expand_as(box)
        boxes[name] = torch.where(ok.any(dim=1), box, fallback)
    return boxes


def crop(images: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear crop of box (x0, y0, x1, y1) ∈ [0, 1] from images [B, 3, H, W] to [B, 3, *size]."""
    x0, y0, x1, y1 = box.unbind(1)
    grid = scale_translate_grid(torch.stack([x1 - x0, y1 - y0, x0 + x1 - 1, y0 + y1 - 1], 1), size)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def body_parts(images: torch.Tensor, keypoints: torch.Tensor, size: int, margin: float = 0.05,
               min_size: float = 0.1) -> list[torch.Tensor]:
    """The 4 part images [B, 3, size, size]: head, torso, arms (left | right), legs."""
    boxes = part_boxes(keypoints, margin, min_size)
    half = (size, max(1, size // 2))
    arms = torch.cat([crop(images, boxes["left_arm"], half), crop(images, boxes["right_arm"], half)], dim=3)
    arms = arms if arms.shape[-1] == size else F.interpolate(arms, size=(size, size), mode="bilinear")
    return [crop(images, boxes["head"], (size, size)), crop(images, boxes["torso"], (size, size)), arms,
            crop(images, boxes["legs"], (size, size))]


class PartCNN(nn.Module):
    """FG-FN for one part: five conv-BN-ReLU layers (stride 2) and an average pool."""

    def __init__(self, channels=(32, 64, 128, 256, 256)):
        super().__init__()
        layers, cin = [], 3
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.net = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x):
        return self.net(x)


class FGVideoNet(nn.Module):
    """The four-stream network. ``forward(x, keypoints=None)``:

    x [N, T, 3, H, W] with T > delta_t; keypoints [N, T, 16, 2] (required when
    ``joint_stream=True``). Training mode returns ``{"features": {...}, "logits": {...}}`` with
    keys "global", "motion", "ma" and "js"; eval mode returns the features dict (one [N, D]
    tensor per stream, per segment — average the segments of a tracklet, then ``fg_distance``).
    """

    STREAMS = ("global", "motion", "ma", "js")

    def __init__(self, num_classes: int, delta_t: int = 5, alpha: float = 0.2, width: int = 64,
                 layers=(3, 4, 6, 3), mask_size=(7, 7), mask_channels: int = 32, lstm_hidden: int = 256,
                 joint_stream: bool = True, part_size: int = 224, part_channels=(32, 64, 128, 256, 256),
                 js_dim: int = 512, part_margin: float = 0.05, part_min: float = 0.1, upsample: str = "bilinear"):
        super().__init__()
        if delta_t < 1:
            raise ValueError(f"FGVideoNet: expected delta_t >= 1, got {delta_t}")
        self.backbone = ResNet(layers, num_classes=None, width=width)
        chans = self.backbone.level_channels
        self.delta_t, self.alpha, self.upsample = delta_t, alpha, upsample
        self.mask_size = tuple(mask_size)
        self.motion = nn.ModuleList(nn.Sequential(nn.Conv2d(3 * c, c, 1, bias=False), nn.BatchNorm2d(c),
                                                  nn.ReLU(inplace=True)) for c in chans)
        self.phi = nn.ModuleList(nn.Conv2d(c, mask_channels, 1) for c in chans)
        self.lstm = LSTMCell(mask_channels * self.mask_size[0] * self.mask_size[1], lstm_hidden)
        self.mask_head = nn.Linear(lstm_hidden, self.mask_size[0] * self.mask_size[1])
        dims = {"global": chans[-1], "motion": sum(chans), "ma": sum(chans)}
        self.joint_stream = joint_stream
        if joint_stream:
            self.part_size, self.part_margin, self.part_min = part_size, part_margin, part_min
            self.parts = nn.ModuleList(PartCNN(part_channels) for _ in range(4))
            fused = 4 * part_channels[-1]
            self.fuse = nn.Sequential(nn.Conv2d(fused, fused, 1, bias=False), nn.BatchNorm2d(fused),
                                      nn.ReLU(inplace=True), nn.Conv2d(fused, js_dim, 1))
            dims["js"] = js_dim
        self.dims = dims
        self.classifiers = nn.ModuleDict({k: nn.Linear(d, num_classes) for k, d in dims.items()})

    def forward(self, x: torch.Tensor, keypoints: torch.Tensor | None = None):
        if x.dim() != 5 or x.shape[1] <= self.delta_t:
            raise ValueError(f"FGVideoNet: expected x of shape [N, T > {self.delta_t}, 3, H, W], got {list(x.shape)}")
        n, t = x.shape[:2]
        pairs = t - self.delta_t
        levels = self.backbone(x.flatten(0, 1), levels=True)  # 5 × [N·T, C_i, H_i, W_i]
        feats = {"global": levels[-1].mean(dim=(2, 3)).view(n, t, -1).mean(dim=1)}

        motion_maps = []
        for f_g, conv in zip(levels, self.motion):
            seg = f_g.view(n, t, *f_g.shape[1:])
            motion_maps.append(conv(fgreid_ops.off(seg, stride=self.delta_t).flatten(0, 1)))  # f_mi [N·P, C_i, ·, ·]
        feats["motion"] = torch.cat([m.mean(dim=(2, 3)) for m in motion_maps], 1).view(n, pairs, -1).mean(dim=1)

        h = motion_maps[0].new_zeros(n * pairs, self.lstm.hidden_size)
        state, masks = (h, h), []
        for f_m, phi in zip(motion_maps, self.phi):  # eq. 1
            state = self.lstm(phi(F.adaptive_avg_pool2d(f_m, self.mask_size)).flatten(1), state)
            masks.append(torch.sigmoid(self.mask_head(state[0])).view(-1, 1, *self.mask_size))
        pooled = []
        for f_g, m in zip(levels, masks):
            refined = self.alpha * m + (1 - self.alpha) * masks[-1]  # eq. 2
            frames = f_g.view(n, t, *f_g.shape[1:])[:, :pairs].flatten(0, 1)
            pooled.append(fgreid_ops.mask_upsample_mul(frames, refined, mode=self.upsample, pool=True))  # eq. 3 + GAP
        feats["ma"] = torch.cat(pooled, 1).view(n, pairs, -1).mean(dim=1)

        if self.joint_stream:
            if keypoints is None:
                raise ValueError("FGVideoNet: the joint-specific stream needs keypoints [N, T, 16, 2]")
            parts = body_parts(x.flatten(0, 1), keypoints.flatten(0, 1).to(x.dtype), self.part_size,
                               self.part_margin, self.part_min)
            js = self.fuse(torch.cat([cnn(p) for cnn, p in zip(self.parts, parts)], dim=1))
            feats["js"] = js.flatten(1).view(n, t, -1).mean(dim=1)

        if not self.training:
            return feats
        return {"features": feats, "logits": {k: self.classifiers[k](f) for k, f in feats.items()}}


def fg_video_loss(out: dict, labels: torch.Tensor):
    """Sum of the streams' cross-entropy losses (loss_global + loss_motion + loss_MA + loss_JS)."""
    parts = {k: F.cross_entropy(v, labels) for k, v in out["logits"].items()}
    return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


def fg_distance(query: dict, gallery: dict) -> torch.Tensor:
    """Eq. 4: the sum over streams of Euclidean distance matrices [Q, G] (equal weights, as the
    paper's Table 11 settles); streams missing on either side are skipped."""
    keys = [k for k in FGVideoNet.STREAMS if k in query and k in gallery]
    return sum(torch.cdist(query[k].float(), gallery[k].float()) for k in keys)
