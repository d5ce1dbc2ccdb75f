"""Re-id datasets read from a folder the user gives (nothing is downloaded), a P×K identity
sampler, and torch Datasets that apply the transforms.

Image datasets (Market-1501 layout; DukeMTMC-reID and MSMT17 converted to it use the same)::

    <root>/bounding_box_train/  <root>/bounding_box_test/  <root>/query/
        file names "<pid>_c<cam>…", e.g. 0002_c1s1_000451_03.jpg (Market), 0001_c2_f0046182.jpg (Duke)
    <root>/head_shoulder_boxes.txt   optional, CUHS's first stage: lines "<file name> x0 y0 x1 y1"
                                     in pixels of that image

pid −1 (Market's junk images) is dropped everywhere, as torchreid and fast-reid do; pid 0
(Market's distractors) stays in the gallery. Cameras become 0-based. Training pids are
relabeled 0 … num_train_pids−1. MSMT17 is also read in its original layout: list_train.txt,
list_query.txt, list_gallery.txt ("<pid dir>/<file> <pid>" per line) beside train/ and test/
(or mask_train_v2/ and mask_test_v2/), camera = third "_" field of the file name (1-based);
list_val.txt is not added to training (the paper setting).

MARS (Zheng et al., ECCV 2016)::

    <root>/bbox_train/<pid>/<name>   <root>/bbox_test/<pid>/<name>   (name e.g. 0001C1T0001F001.jpg)
    <root>/info/train_name.txt  test_name.txt  tracks_train_info.mat  tracks_test_info.mat  query_IDX.mat

track rows (start, end, pid, camera), 1-based and inclusive; query = test tracks at query_IDX,
gallery = the other test tracks; pid −1 tracks dropped. The .mat files are read without scipy.

FGPR-style video data (Yin et al., IJCV 2020) — this package's documented layout::

    <root>/<group>/<camera>/<pid>/<frames>     e.g. blue/cam1/0007/000001.jpg
        one folder per fine-grained group, exactly two camera folders per group (sorted by
        name: the first is camera A), one tracklet per identity and camera, frames in the
        temporal order of their sorted file names, pids unique across groups
    <root>/<group>/<camera>/<pid>/keypoints.txt   optional: one line per frame,
        "<frame file> x1 y1 … x16 y16" in pixels, −1 −1 for a missing joint, joints in the
        order of python_models.fg_video.JOINTS
    <root>/splits.txt   optional: lines "train <pid>" / "test <pid>"; without it a random split
        (seed = ``split``) takes ``num_test_ids`` identities for test (100 of 358 in the paper)
"""

import dataclasses
import os
import random
import re
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ._matfile import load_mat
from .transforms import ImageTransform, SegmentTransform, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
NUM_JOINTS = 16


@dataclasses.dataclass
class Sample:
    path: str
    pid: int
    camid: int


@dataclasses.dataclass
class Tracklet:
    frames: list  # paths, temporal order
    pid: int
    camid: int
    group: str = ""
    keypoints: np.ndarray | None = None  # [len(frames), 16, 2] pixels, −1 = missing


@dataclasses.dataclass
class ReidData:
    """train / query / gallery lists (Samples for images, Tracklets for video)."""
    name: str
    root: str
    train: list
    query: list
    gallery: list
    boxes: dict = dataclasses.field(default_factory=dict)  # file name -> (x0, y0, x1, y1) pixels

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    def summary(self) -> str:
        def ids(items):
            return len({s.pid for s in items})
        return (f"{self.name} at {self.root}: train {len(self.train)} ({ids(self.train)} ids), "
                f"query {len(self.query)} ({ids(self.query)} ids), gallery {len(self.gallery)} ({ids(self.gallery)} ids)")


def _require_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset folder not found: {path}")
    return path


def _images(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _relabel(items: list) -> list:
    mapping = {pid: i for i, pid in enumerate(sorted({s.pid for s in items}))}
    return [dataclasses.replace(s, pid=mapping[s.pid]) for s in items]


_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def parse_market_name(name: str) -> tuple[int, int]:
    """'0002_c1s1_000451_03.jpg' → (2, 0): pid and 0-based camera."""
    m = _MARKET_NAME.match(name)
    if m is None:
        raise ValueError(f"file name {name!r} does not follow the '<pid>_c<camera>…' convention")
    return int(m.group(1)), int(m.group(2)) - 1


def _market_dir(folder: str) -> list[Sample]:
    out = []
    for name in _images(_require_dir(folder)):
        pid, camid = parse_market_name(name)
        if pid != -1:
            out.append(Sample(os.path.join(folder, name), pid, camid))
    return out


def read_boxes(path: str) -> dict:
    boxes = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 5:
                    boxes[parts[0]] = tuple(float(v) for v in parts[1:])
    return boxes


def market_layout(root: str, name: str = "market1501") -> ReidData:
    """Any dataset in the Market-1501 layout (Market-1501, DukeMTMC-reID, converted MSMT17)."""
    train = _relabel(_market_dir(os.path.join(root, "bounding_box_train")))
    return ReidData(name, root, train, _market_dir(os.path.join(root, "query")),
                    _market_dir(os.path.join(root, "bounding_box_test")),
                    read_boxes(os.path.join(root, "head_shoulder_boxes.txt")))


def msmt17(root: str) -> ReidData:
    """MSMT17 in its original list-file layout, or in the Market layout when converted."""
    if os.path.isdir(os.path.join(root, "bounding_box_train")):
        return market_layout(root, "msmt17")

    def image_dir(kind):
        for d in (f"mask_{kind}_v2", kind):
            if os.path.isdir(os.path.join(root, d)):
                return os.path.join(root, d)
        raise FileNotFoundError(f"msmt17: no {kind}/ or mask_{kind}_v2/ folder in {root}")

    def read_list(list_name, folder):
        out = []
        with open(os.path.join(root, list_name)) as f:
            for line in f:
                if line.strip():
                    rel, pid = line.split()
                    camid = int(os.path.basename(rel).split("_")[2]) - 1
                    out.append(Sample(os.path.join(folder, rel), int(pid), camid))
        return out

    train = _relabel(read_list("list_train.txt", image_dir("train")))
    test_dir = image_dir("test")
    return ReidData("msmt17", root, train, read_list("list_query.txt", test_dir),
                    read_list("list_gallery.txt", test_dir), read_boxes(os.path.join(root, "head_shoulder_boxes.txt")))


def _mat_array(path: str) -> np.ndarray:
    arrays = load_mat(path)
    if len(arrays) != 1:
        raise ValueError(f"mars: expected one matrix in {path}, found {sorted(arrays)}")
    return next(iter(arrays.values()))


def mars(root: str) -> ReidData:
    info = _require_dir(os.path.join(root, "info"))

    def names(fname):
        with open(os.path.join(info, fname)) as f:
            return [line.strip() for line in f if line.strip()]

    def tracks(names_list, folder, rows):
        out = []
        for start, end, pid, cam in rows.astype(np.int64):
            if pid == -1:
                continue
            frames = [os.path.join(root, folder, n[:4], n) for n in names_list[start - 1:end]]
            out.append(Tracklet(frames, int(pid), int(cam) - 1))
        return out

    train = _relabel(tracks(names("train_name.txt"), "bbox_train",
                            _mat_array(os.path.join(info, "tracks_train_info.mat"))))
    test_rows = _mat_array(os.path.join(info, "tracks_test_info.mat"))
    query_idx = set((_mat_array(os.path.join(info, "query_IDX.mat")).astype(np.int64).ravel() - 1).tolist())
    test_names = names("test_name.txt")
    query = tracks(test_names, "bbox_test", test_rows[sorted(query_idx)])
    gallery = tracks(test_names, "bbox_test", test_rows[[i for i in range(len(test_rows)) if i not in query_idx]])
    return ReidData("mars", root, train, query, gallery)


def read_keypoints(path: str, frames: list[str]) -> np.ndarray | None:
    if not os.path.isfile(path):
        return None
    kp = np.full((len(frames), NUM_JOINTS, 2), -1.0, dtype=np.float32)
    index = {os.path.basename(f): i for i, f in enumerate(frames)}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in index:
                if len(parts) != 1 + 2 * NUM_JOINTS:
                    raise ValueError(f"{path}: expected '<frame> x1 y1 … x16 y16', got {len(parts)} fields")
                kp[index[parts[0]]] = np.asarray(parts[1:], dtype=np.float32).reshape(NUM_JOINTS, 2)
    return kp


def fgpr(root: str, split: int = 0, num_test_ids: int = 100) -> ReidData:
    """FGPR-style data in the layout of this module's docstring. Train: every tracklet of the
    training ids; query / gallery: the test tracklets (the FGPR protocol then pairs the two
    cameras of each group, see python_models.evaluate.fgpr_protocol)."""
    tracklets, camid = [], 0
    for group in sorted(d for d in os.listdir(_require_dir(root)) if os.path.isdir(os.path.join(root, d))):
        cams = sorted(d for d in os.listdir(os.path.join(root, group)) if os.path.isdir(os.path.join(root, group, d)))
        if len(cams) != 2:
            raise ValueError(f"fgpr: group {group!r} must have exactly two camera folders, found {cams}")
        for cam in cams:
            for pid_dir in sorted(os.listdir(os.path.join(root, group, cam))):
                folder = os.path.join(root, group, cam, pid_dir)
                frames = [os.path.join(folder, f) for f in _images(folder)]
                if frames:
                    kp = read_keypoints(os.path.join(folder, "keypoints.txt"), frames)
                    tracklets.append(Tracklet(frames, int(pid_dir), camid, group, kp))
            camid += 1
    pids = sorted({t.pid for t in tracklets})
    split_file = os.path.join(root, "splits.txt")
    if os.path.isfile(split_file):
        with open(split_file) as f:
            test = {int(p) for kind, p in (line.split() for line in f if line.strip()) if kind == "test"}
    else:
        test = set(random.Random(split).sample(pids, min(num_test_ids, len(pids) // 2)))
    train = _relabel([t for t in tracklets if t.pid not in test])
    test_tracks = [t for t in tracklets if t.pid in test]
    return ReidData("fgpr", root, train, test_tracks, test_tracks)


DATASETS = {
    "market1501": lambda root, **_: market_layout(root, "market1501"),
    "dukemtmc": lambda root, **_: market_layout(root, "dukemtmc"),
    "msmt17": lambda root, **_: msmt17(root),
    "mars": lambda root, **_: mars(root),
    "fgpr": lambda root, split=0, num_test_ids=100, **_: fgpr(root, split, num_test_ids),
}
VIDEO_DATASETS = ("mars", "fgpr")


def load_dataset(name: str, root: str, **kwargs) -> ReidData:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](root, **kwargs)


# ----------------------------------------------------------------------------------------------
# torch Datasets
# ----------------------------------------------------------------------------------------------

class ImageDataset(Dataset):
    """Items (image [3, H, W], pid, camid, box [4]); box = head-shoulder box (x0, y0, x1, y1) in
    [0, 1] of the resized image, or NaNs when the image has none."""

    def __init__(self, samples: list, transform: ImageTransform, boxes: dict | None = None):
        self.samples, self.transform, self.boxes = samples, transform, boxes or {}

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        img = load_image(s.path)
        box = self.boxes.get(os.path.basename(s.path))
        if box is not None:
            w, h = img.size
            box = torch.tensor([box[0] / w, box[1] / h, box[2] / w, box[3] / h])
        x, box = self.transform(img, box)
        return x, s.pid, s.camid, box if box is not None else torch.full((4,), float("nan"))


class SegmentDataset(Dataset):
    """Segments of ``seq_len`` frames from tracklets (frames repeated at the end of a short
    tracklet). ``mode="random"``: one item per tracklet, a random start each time (training);
    ``mode="all"``: the consecutive non-overlapping full segments (testing; a tracklet shorter
    than one segment gives one padded segment, a tail shorter than seq_len is left out). Items: (frames
    [T, 3, H, W], keypoints [T, 16, 2] in [0, 1] (−1 = missing), pid, camid, tracklet index)."""

    def __init__(self, tracklets: list, transform: SegmentTransform, seq_len: int = 10, mode: str = "random"):
        if mode not in ("random", "all"):
            raise ValueError(f"SegmentDataset: mode must be 'random' or 'all', got {mode!r}")
        self.tracklets, self.transform, self.seq_len, self.mode = tracklets, transform, seq_len, mode
        if mode == "all":
            self.items = [(i, s) for i, t in enumerate(tracklets) for s in range(0, max(1, len(t.frames)), seq_len)
                          if s == 0 or s + seq_len <= len(t.frames)]
        else:
            self.items = [(i, None) for i in range(len(tracklets))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        ti, start = self.items[i]
        t = self.tracklets[ti]
        n = len(t.frames)
        if start is None:
            start = int(torch.randint(0, max(1, n - self.seq_len + 1), ()))
        idx = [min(start + j, n - 1) for j in range(self.seq_len)]
        frames = [load_image(t.frames[j]) for j in idx]
        if t.keypoints is not None:
            kp = torch.from_numpy(t.keypoints[idx]).clone()
            sizes = torch.tensor([f.size for f in frames], dtype=torch.float32)[:, None, :]  # (w, h)
            kp = torch.where(kp < 0, torch.full_like(kp, -1.0), kp / sizes)
        else:
            kp = torch.full((self.seq_len, NUM_JOINTS, 2), -1.0)
        x, kp = self.transform(frames, kp)
        return x, kp, t.pid, t.camid, ti


class PKSampler(Sampler):
    """Batches of P identities × K items (Hermans et al. 2017; 16 × 4 = 64 in CUHS).

    Each epoch every identity's items are shuffled and cut into groups of K (an identity with
    fewer than K items is drawn with replacement to K); batches take P distinct identities with
    groups left, until fewer than P remain. Yields lists of indices (use as ``batch_sampler``)."""

    def __init__(self, pids: list, p: int = 16, k: int = 4, seed: int = 0):
        self.by_pid = defaultdict(list)
        for i, pid in enumerate(pids):
            self.by_pid[int(pid)].append(i)
        if len(self.by_pid) < p:
            raise ValueError(f"PKSampler: {len(self.by_pid)} identities, fewer than P = {p}")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self._len = sum(max(len(v), k) // k for v in self.by_pid.values()) // p

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self._len

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        groups = {}
        for pid, idx in self.by_pid.items():
            idx = idx if len(idx) >= self.k else rng.choices(idx, k=self.k)
            idx = rng.sample(idx, len(idx))
            groups[pid] = [idx[j:j + self.k] for j in range(0, len(idx) - self.k + 1, self.k)]
        available = [pid for pid in groups if groups[pid]]
        for _ in range(self._len):
            if len(available) < self.p:
                return
            chosen = rng.sample(available, self.p)
            yield [i for pid in chosen for i in groups[pid].pop()]
            available = [pid for pid in available if groups[pid]]
