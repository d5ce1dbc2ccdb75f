"""Image loading and the CUHS augmentations (resize, horizontal flip, random erasing), written
with PIL and torch only (no torchvision). Randomness comes from torch's generator, so
``torch.manual_seed`` (and DataLoader's per-worker seeding) makes it reproducible."""

import math

import torch
from PIL import Image

from .fg_video import FLIP_JOINTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB → float32 [3, H, W] in [0, 1]."""
    w, h = img.size
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(h, w, 3).permute(2, 0, 1).float().div_(255)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def random_erasing(x: torch.Tensor, p: float = 0.5, area=(0.02, 0.4), min_aspect: float = 0.3,
                   value: float = 0.0, attempts: int = 100) -> torch.Tensor:
    """Random erasing (Zhong et al., AAAI 2020) of one [C, H, W] image: with probability p, a
    rectangle of area ∈ area·H·W and aspect ratio ∈ [r1, 1/r1] is set to `value` (0 after
    normalization = the ImageNet mean colour, as reid-strong-baseline erases with the mean)."""
    if torch.rand(()) >= p:
        return x
    _, h, w = x.shape
    for _ in range(attempts):
        target = float(torch.empty(()).uniform_(*area)) * h * w
        log_r = torch.empty(()).uniform_(math.log(min_aspect), -math.log(min_aspect))
        aspect = math.exp(float(log_r))
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top = int(torch.randint(0, h - eh + 1, ()))
            left = int(torch.randint(0, w - ew + 1, ()))
            x = x.clone()
            x[:, top:top + eh, left:left + ew] = value
            return x
    return x


def flip_box(box: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) in [0, 1] under a horizontal flip."""
    return torch.stack([1 - box[2], box[1], 1 - box[0], box[3]])


class ImageTransform:
    """Resize to (height, width) (PIL bilinear), to tensor, normalize; in training also
    horizontal flip (p = 0.5) and random erasing (p = 0.5), the CUHS recipe. A head-shoulder box
    (x0, y0, x1, y1) in [0, 1] follows the flip."""

    def __init__(self, height: int = 384, width: int = 128, train: bool = False, flip_p: float = 0.5,
                 erase_p: float = 0.5):
        self.size, self.train, self.flip_p, self.erase_p = (height, width), train, flip_p, erase_p

    def __call__(self, img: Image.Image, box: torch.Tensor | None = None):
        x = normalize(to_tensor(img.resize((self.size[1], self.size[0]), Image.BILINEAR)))
        if self.train:
            if torch.rand(()) < self.flip_p:
                x = x.flip(-1)
                box = flip_box(box) if box is not None else None
            x = random_erasing(x, self.erase_p)
        return x, box


class SegmentTransform:
    """The same for a segment of frames: every frame resized and normalized; in training one
    flip decision for the whole segment (keypoints mirrored, left and right joints swapped)."""

    def __init__(self, height: int = 224, width: int = 224, train: bool = False, flip_p: float = 0.5,
                 erase_p: float = 0.0):
        self.frame = ImageTransform(height, width, train=False)
        self.train, self.flip_p, self.erase_p = train, flip_p, erase_p

    def __call__(self, frames: list, keypoints: torch.Tensor):
        """frames: list of PIL images; keypoints [T, 16, 2] in [0, 1] (negative = missing)."""
        x = torch.stack([self.frame(f)[0] for f in frames])
        if self.train:
            if torch.rand(()) < self.flip_p:
                x = x.flip(-1)
                missing = (keypoints < 0).any(-1, keepdim=True)
                flipped = torch.stack([1 - keypoints[..., 0], keypoints[..., 1]], -1)
                keypoints = torch.where(missing, keypoints, flipped)[:, list(FLIP_JOINTS)]
            if self.erase_p:
                x = torch.stack([random_erasing(f, self.erase_p) for f in x])
        return x, keypoints
