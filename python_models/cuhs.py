"""CUHS — Color-Unrelated Head-Shoulder network (Xu et al., ACM TOMM 2023), SPEC §7.

    input 384×128 ─ base: ResNet-50 conv1 … layer3[0] (res_conv4_1), shared
        ├─ BN stream:  layer3[1:] + layer4 (BN)  → F_BN → GAP → 1×1 conv            → f_BN
        ├─ IN stream:  layer3[1:] + layer4 (IN)  → F_1  → GAP → 1×1 conv            → f_1^IN
        │                                          F_2' = topk_mask(F_1, F_2, k)  (eqs. 5–6)
        │                                                → GAP → 1×1 conv           → f_2^IN
        └─ HS stream:  layer3[1:] + layer4 (BN)  → F_3  → HSL crop (eq. 7) → HAN (eqs. 8–11)
                                                         → GeM → 1×1 conv           → f_h
    training: CE + batch-hard triplet on each of the four features (eqs. 12–14), L2 on the
    HSL box in a first stage (eq. 15); inference: concat [f_BN, f_1^IN, f_2^IN, f_h] (4·c).

Choices the paper leaves open, written down here:
- The two IN branches share one IN block (F_1 = F_2): the paper's parameter size (342.3 MB)
  matches three copies of layer3[1:]+layer4, not four (see ``parameter_report``).
- "1×1 conv to c" is Conv2d(C, c, 1, bias=False) followed by BatchNorm (MGN's reduction,
  which the paper follows, without its ReLU); classifiers are bias-free Linear(c, classes).
- HSL's FC (C → 4) reads GAP(F_3); its weights start at zero and its bias at the top third of
  the map (s_x = 1, s_y = 1/3, t_x = 0, t_y = −2/3), so the crop starts on the head-shoulder
  prior. After the first stage ``freeze_hsl()`` stops gradients into the box (the FC's
  weights and the path GAP(F_3) → θ), while the crop still passes gradients to F_3.
- The crop is resampled to ``hs_size`` (default: one third of the map's height × its width,
  8×8 at 384×128) with bilinear ``grid_sample``, zero padding, align_corners=False.
- HAN's reduction ratio r = 16 (SE-Net's); its FCs have biases.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

import fgreid_ops

from .resnet import Bottleneck, ResNet, init_weights, make_layer

# top-k of the attention exploration mechanism per dataset (paper, Fig. 5)
TOPK = {"fg-reid": 5, "market1501": 45, "dukemtmc": 20}


def instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


class Stream(nn.Module):
    """One stream's own copy of layer3[1:] + layer4. The block indices keep torchvision's
    numbering (``layer3.1`` … ``layer3.5``, ``layer4.0`` …) so ImageNet weights map by name."""

    def __init__(self, width: int, layers, last_stride: int, norm_layer=nn.BatchNorm2d):
        super().__init__()
        c3 = 16 * width
        self.layer3 = nn.Sequential(OrderedDict(
            (str(i), Bottleneck(c3, 4 * width, norm_layer=norm_layer)) for i in range(1, layers[2])))
        self.layer4 = make_layer(c3, 8 * width, layers[3], last_stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(x))


class HSL(nn.Module):
    """Head-shoulder segmentation layer (eq. 7): FC C→4 gives (s_x, s_y, t_x, t_y),
    θ = [[s_x, 0, t_x], [0, s_y, t_y]], and its affine sampling grid + grid_sample crop the map."""

    PRIOR = (1.0, 1.0 / 3.0, 0.0, -2.0 / 3.0)

    def __init__(self, channels: int, out_size: tuple[int, int] | None = None):
        super().__init__()
        self.fc = nn.Linear(channels, 4)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor(self.PRIOR))
        self.out_size = tuple(out_size) if out_size else None
        self.frozen = False

    def forward(self, f: torch.Tensor):
        pooled = f.mean(dim=(2, 3))
        if self.frozen:
            pooled = pooled.detach()
        params = self.fc(pooled)  # [N, 4] = s_x, s_y, t_x, t_y
        h, w = f.shape[-2:]
        size = self.out_size or (max(1, h // 3), w)
        grid = scale_translate_grid(params, size)
        crop = F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return crop, params_to_box(params)


def scale_translate_grid(params: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Eq. 7's sampling grid: F.affine_grid(θ, [N, ·, *size], align_corners=False) for
    θ = [[s_x, 0, t_x], [0, s_y, t_y]] (params [N, 4] = s_x, s_y, t_x, t_y), written out because
    affine_grid's backward has no fake-tensor kernel for torch.compile to trace."""
    sx, sy, tx, ty = (v[:, None, None] for v in params.unbind(1))
    xs = (torch.arange(size[1], dtype=params.dtype, device=params.device) * 2 + 1) / size[1] - 1
    ys = (torch.arange(size[0], dtype=params.dtype, device=params.device) * 2 + 1) / size[0] - 1
    return torch.stack(torch.broadcast_tensors(sx * xs[None, None, :] + tx, sy * ys[None, :, None] + ty), dim=-1)


def params_to_box(params: torch.Tensor) -> torch.Tensor:
    """r(p) of eq. 15: (s_x, s_y, t_x, t_y) → box (x0, y0, x1, y1) in [0, 1] image coordinates
    (affine_grid's [−1, 1] with align_corners=False spans the whole map)."""
    sx, sy, tx, ty = params.unbind(1)
    return torch.stack([(tx - sx + 1) / 2, (ty - sy + 1) / 2, (tx + sx + 1) / 2, (ty + sy + 1) / 2], 1)


class HAN(nn.Module):
    """Head-shoulder attention network: channel gate then spatial gate (eqs. 8–11)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc_r = nn.Linear(channels, max(1, channels // reduction))
        self.fc_i = nn.Linear(max(1, channels // reduction), channels)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        d = torch.sigmoid(self.fc_i(F.relu(self.fc_r(f.mean(dim=(2, 3))))))  # eq. 9
        fc = f + f * d[:, :, None, None]  # eq. 8
        s = torch.sigmoid(fc.sum(dim=1, keepdim=True))  # eq. 11
        return fc * s  # eq. 10


def reduction(channels: int, dim: int) -> nn.Sequential:
    """The "1×1 convolution layer for channel reduction" on a pooled [N, C, 1, 1] map."""
    return nn.Sequential(nn.Conv2d(channels, dim, 1, bias=False), nn.BatchNorm2d(dim))


class CUHS(nn.Module):
    """CUHS for ``num_classes`` training identities.

    Args:
        num_classes: identities in the training set (size of each classifier).
        feat_dim: c, the size of each of the four features (1536 in the paper).
        topk: k of the attention exploration mechanism (5 FG-reID, 45 Market-1501, 20 Duke).
        last_stride: stride of layer4 (1 in the paper).
        width, layers: ResNet-50 is width 64, layers (3, 4, 6, 3); smaller values build a narrow
            net of the same structure (fast tests). layers[2] must be ≥ 2.
        hs_size: size of the head-shoulder crop (default: a third of the map's height × width).
        han_reduction: HAN's r. gem_p: GeM's initial (learnable) exponent.

    ``forward(x)`` on [N, 3, H, W]: in training mode a dict with ``features`` (the four [N, c]
    tensors in the order f_BN, f_1^IN, f_2^IN, f_h), ``logits`` (four [N, num_classes]) and
    ``boxes`` ([N, 4] predicted head-shoulder box, (x0, y0, x1, y1) in [0, 1]); in eval mode the
    [N, 4c] concatenation used for retrieval.
    """

    FEATURES = ("bn", "in1", "in2", "hs")

    def __init__(self, num_classes: int, feat_dim: int = 1536, topk: int = 5, last_stride: int = 1,
                 width: int = 64, layers=(3, 4, 6, 3), hs_size=None, han_reduction: int = 16, gem_p: float = 3.0):
        super().__init__()
        if layers[2] < 2:
            raise ValueError("CUHS: expected layers[2] >= 2 (layer3[0] is shared, layer3[1:] is per stream)")
        if topk < 0:
            raise ValueError(f"CUHS: expected topk >= 0, got {topk}")
        base = ResNet(layers, num_classes=None, width=width)
        base.layer3 = base.layer3[:1]
        del base.layer4
        self.base = base
        self.topk = topk
        channels = 32 * width
        self.bn_stream = Stream(width, layers, last_stride)
        self.in_stream = Stream(width, layers, last_stride, instance_norm)
        self.hs_stream = Stream(width, layers, last_stride)
        self.hsl = HSL(channels, hs_size)
        self.han = HAN(channels, han_reduction)
        self.gem = fgreid_ops.nn.GeM(p=gem_p)
        self.reduce = nn.ModuleDict({name: reduction(channels, feat_dim) for name in self.FEATURES})
        self.classifiers = nn.ModuleDict({name: nn.Linear(feat_dim, num_classes, bias=False) for name in self.FEATURES})
        for stream in (self.bn_stream, self.in_stream, self.hs_stream):
            init_weights(stream)
        for cls in self.classifiers.values():
            nn.init.normal_(cls.weight, std=0.001)
        self.feat_dim = feat_dim

    def backbone_base(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        return b.layer3(b.layer2(b.layer1(b.maxpool(b.stem(x)))))

    def forward(self, x: torch.Tensor):
        f = self.backbone_base(x)
        f_bn = self.bn_stream(f)
        f_in = self.in_stream(f)
        f_in2, _ = fgreid_ops.topk_mask(f_in, f_in, self.topk)  # eqs. 5–6 (F_2 = F_1: one IN block)
        crop, boxes = self.hsl(self.hs_stream(f))  # eq. 7
        pooled = {
            "bn": f_bn.mean(dim=(2, 3)),
            "in1": f_in.mean(dim=(2, 3)),
            "in2": f_in2.mean(dim=(2, 3)),
            "hs": self.gem(self.han(crop)),
        }
        feats = [self.reduce[k](pooled[k][:, :, None, None]).flatten(1) for k in self.FEATURES]
        if not self.training:
            return torch.cat(feats, dim=1)
        logits = [self.classifiers[k](f) for k, f in zip(self.FEATURES, feats)]
        return {"features": feats, "logits": logits, "boxes": boxes}

    def freeze_hsl(self, frozen: bool = True) -> None:
        """End of the first stage: the head-shoulder box stops learning."""
        self.hsl.frozen = frozen
        for p in self.hsl.parameters():
            p.requires_grad_(not frozen)

    def load_backbone(self, state_dict: dict) -> list[str]:
        """Load torchvision ResNet-50 (ImageNet) weights: conv1…layer3.0 into the shared base,
        layer3.1…layer4 into each stream (the IN stream takes the BN affine weights and no
        running statistics). Returns the keys of this model left at their initialization."""
        mapped = {}
        for key, value in state_dict.items():
            if key.startswith("fc."):
                continue
            if key.startswith("layer4.") or (key.startswith("layer3.") and not key.startswith("layer3.0.")):
                for stream in ("bn_stream", "hs_stream", "in_stream"):
                    if stream == "in_stream" and key.rsplit(".", 1)[1] in ("running_mean", "running_var",
                                                                            "num_batches_tracked"):
                        continue
                    mapped[f"{stream}.{key}"] = value
            else:
                mapped[f"base.{key}"] = value
        result = self.load_state_dict(mapped, strict=False)
        if result.unexpected_keys:
            raise KeyError(f"CUHS.load_backbone: unexpected keys {result.unexpected_keys[:5]}")
        return list(result.missing_keys)


def cuhs_loss(out: dict, labels: torch.Tensor, margin: float = 0.3, eta1: float = 1.0, eta2: float = 1.0):
    """Eq. 14: η1·Σ CE + η2·Σ batch-hard triplet over the four features (η1 = η2 = 1, margin α = 0.3)."""
    ce = sum(F.cross_entropy(logit, labels) for logit in out["logits"])
    tri = sum(fgreid_ops.batch_hard_triplet(f, labels, margin=margin) for f in out["features"])
    return eta1 * ce + eta2 * tri, {"ce": ce.detach(), "triplet": tri.detach()}


def hsl_loss(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """Eq. 15: mean over images of ‖c − r(p)‖² with both boxes as (x0, y0, x1, y1) in [0, 1].
    Rows of ``gt_boxes`` that are NaN (image without an annotation) are left out."""
    valid = ~torch.isnan(gt_boxes).any(dim=1)
    err = (torch.nan_to_num(gt_boxes) - pred_boxes).pow(2).sum(dim=1)
    return (err * valid).sum() / valid.sum().clamp(min=1)


def parameter_report(model: nn.Module) -> dict:
    """Parameter count and size in float32 (MB = 10⁶ bytes, MiB = 2²⁰), beside the paper's 342.3 MB."""
    count = sum(p.numel() for p in model.parameters())
    return {"parameters": count, "MB": count * 4 / 1e6, "MiB": count * 4 / 2**20, "paper_MB": 342.3}
