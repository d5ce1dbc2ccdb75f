"""ResNet-50 (He et al., CVPR 2016) whose state_dict keys are torchvision's ``resnet50`` keys.

Keys: ``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
``layer{1..4}.{i}.conv{1,2,3}.weight``, ``layer{1..4}.{i}.bn{1,2,3}.*``,
``layer{1..4}.0.downsample.{0,1}.*`` and ``fc.{weight,bias}`` — so ImageNet weights a user
already has load with ``model.load_state_dict(torch.load("resnet50-....pth"))`` (this package
never downloads anything). As in torchvision ≥ 0.2 ("ResNet v1.5"), the stride of a
downsampling bottleneck sits on its 3×3 conv.

Re-id options: ``last_stride=1`` (layer4 keeps the layer3 resolution: 24×8 maps at 384×128, the
setting of CUHS and most re-id baselines), ``num_classes=None`` (no pooling/fc head; then
``load_torchvision`` drops ``fc.*``), ``width`` (channels of the stem; 64 is ResNet-50, smaller
values give a narrow net with the same structure, used by the fast tests), ``layers`` (blocks per
stage) and ``norm_layer``.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer(inplanes: int, planes: int, blocks: int, stride: int = 1,
               norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """One ResNet stage of `blocks` bottlenecks (the first one may downsample)."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(conv1x1(inplanes, planes * Bottleneck.expansion, stride),
                                   norm_layer(planes * Bottleneck.expansion))
    layers = [Bottleneck(inplanes, planes, stride, downsample, norm_layer)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, norm_layer=norm_layer) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """torchvision's initialization: Kaiming-normal (fan_out) convs, unit/zero norm affines."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """ResNet with Bottleneck blocks; ``forward(x, levels=True)`` returns the 5 level outputs.

    The five levels are the outputs of conv1 (after BN+ReLU, before the max-pool: res_conv1),
    layer1, layer2, layer3 and layer4 — at 224×224 input: 112², 56², 28², 14², 7² with
    width, 4·width, 8·width, 16·width, 32·width channels (64…2048 for ResNet-50).
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int | None = 1000, last_stride: int = 2,
                 width: int = 64, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"ResNet: expected last_stride to be 1 or 2, got {last_stride}")
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_layer(width, width, layers[0], 1, norm_layer)
        self.layer2 = make_layer(4 * width, 2 * width, layers[1], 2, norm_layer)
        self.layer3 = make_layer(8 * width, 4 * width, layers[2], 2, norm_layer)
        self.layer4 = make_layer(16 * width, 8 * width, layers[3], last_stride, norm_layer)
        self.out_channels = 32 * width
        self.level_channels = (width, 4 * width, 8 * width, 16 * width, 32 * width)
        if num_classes:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(32 * width, num_classes)
        else:
            self.fc = None
        init_weights(self)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """res_conv1: conv1 → BN → ReLU (before the max-pool)."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward(self, x: torch.Tensor, levels: bool = False):
        l1 = self.stem(x)
        l2 = self.layer1(self.maxpool(l1))
        l3 = self.layer2(l2)
        l4 = self.layer3(l3)
        l5 = self.layer4(l4)
        if levels:
            return [l1, l2, l3, l4, l5]
        if self.fc is None:
            return l5
        return self.fc(torch.flatten(self.avgpool(l5), 1))

    def load_torchvision(self, state_dict: dict, strict: bool = True):
        """Load a torchvision ``resnet50`` state_dict (ImageNet weights the user has on disk);
        ``fc.*`` is dropped when this model has no fc head."""
        if self.fc is None:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        return self.load_state_dict(state_dict, strict=strict)


def resnet50(num_classes: int | None = 1000, last_stride: int = 2, **kwargs) -> ResNet:
    """ResNet-50: blocks (3, 4, 6, 3), width 64; 25,557,032 parameters with the 1000-class fc."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, last_stride=last_stride, **kwargs)
