"""Tiny re-id datasets written to disk in each supported layout, for the model and data tests.

Every identity has its own colours (a "shirt" over "trousers" with a pid-dependent stripe) plus
noise, so a small network can learn them in a few steps and evaluation has a right answer."""

import colorsys
import os

import numpy as np
from PIL import Image

from python_models._matfile import save_mat

SIZE = (32, 16)  # H, W of the generated images


def person(pid: int, cam: int, idx: int, size=SIZE) -> Image.Image:
    rng = np.random.default_rng(pid * 1000 + cam * 100 + idx)
    h, w = size
    top = np.array(colorsys.hsv_to_rgb((pid * 0.137) % 1.0, 0.9, 0.9)) * 255
    bottom = np.array(colorsys.hsv_to_rgb((pid * 0.291 + 0.5) % 1.0, 0.7, 0.6)) * 255
    img = np.empty((h, w, 3))
    img[: h // 2], img[h // 2:] = top, bottom
    stripe = (pid * 5) % (h - 2)
    img[stripe: stripe + 2] = 255 - top
    img = img * (0.85 + 0.05 * cam) + rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_market(root, train_ids=range(1, 9), test_ids=range(9, 13), cams=3, per_cam=2, style="market",
                boxes=True):
    """Market-1501 (or Duke, style="duke") layout; returns root. Adds a junk (-1) and a
    distractor (0000) image to the gallery, and head_shoulder_boxes.txt for the train images."""
    def name(pid, cam, idx):
        if style == "duke":
            return f"{pid:04d}_c{cam}_f{idx:07d}.jpg"
        return f"{pid:04d}_c{cam}s1_{idx:06d}_00.jpg" if pid >= 0 else f"-1_c{cam}s1_{idx:06d}_00.jpg"

    dirs = {d: os.path.join(root, d) for d in ("bounding_box_train", "bounding_box_test", "query")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    box_lines = []
    for pid in train_ids:
        for cam in range(1, cams + 1):
            for i in range(per_cam):
                n = name(pid, cam, 100 * cam + i)
                person(pid, cam, i).save(os.path.join(dirs["bounding_box_train"], n))
                box_lines.append(f"{n} 2 0 14 10\n")
    for pid in test_ids:
        person(pid, 1, 0).save(os.path.join(dirs["query"], name(pid, 1, 1)))
        for cam in range(2, cams + 1):
            for i in range(per_cam):
                person(pid, cam, i).save(os.path.join(dirs["bounding_box_test"], name(pid, cam, 100 * cam + i)))
    person(99, 2, 0).save(os.path.join(dirs["bounding_box_test"], name(-1, 2, 7)))
    person(98, 2, 0).save(os.path.join(dirs["bounding_box_test"], name(0, 2, 8)))
    if boxes:
        with open(os.path.join(root, "head_shoulder_boxes.txt"), "w") as f:
            f.writelines(box_lines)
    return root


def make_msmt_lists(root, train_ids=range(0, 4), test_ids=range(4, 6), cams=2):
    """MSMT17 original layout: train/ and test/ folders with list_*.txt files."""
    lists = {"list_train.txt": [], "list_query.txt": [], "list_gallery.txt": []}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        for pid in ids:
            os.makedirs(os.path.join(root, split, f"{pid:04d}"), exist_ok=True)
            for cam in range(1, cams + 1):
                rel = f"{pid:04d}/{pid:04d}_{cam:03d}_{cam:02d}_0303morning_0015_0.jpg"
                person(pid, cam, 0).save(os.path.join(root, split, rel))
                key = "list_train.txt" if split == "train" else ("list_query.txt" if cam == 1 else "list_gallery.txt")
                lists[key].append(f"{rel} {pid}\n")
    for fname, lines in lists.items():
        with open(os.path.join(root, fname), "w") as f:
            f.writelines(lines)
    return root


def make_mars(root, train_ids=range(1, 5), test_ids=range(5, 8), frames=5, compress=False):
    """MARS layout: bbox_train/, bbox_test/ and info/ (names, track info and query_IDX .mat)."""
    os.makedirs(os.path.join(root, "info"), exist_ok=True)

    def write(folder, ids, tracks_per_id):
        names, rows, track = [], [], 0
        for pid in ids:
            os.makedirs(os.path.join(root, folder, f"{pid:04d}"), exist_ok=True)
            for cam in range(1, tracks_per_id + 1):
                track += 1
                start = len(names) + 1
                for f in range(frames):
                    n = f"{pid:04d}C{cam}T{track:04d}F{f + 1:03d}.jpg"
                    person(pid, cam, f).save(os.path.join(root, folder, f"{pid:04d}", n))
                    names.append(n)
                rows.append([start, len(names), pid, cam])
        return names, np.array(rows, dtype=np.float64)

    train_names, train_rows = write("bbox_train", train_ids, 2)
    test_names, test_rows = write("bbox_test", test_ids, 3)
    for fname, names in (("train_name.txt", train_names), ("test_name.txt", test_names)):
        with open(os.path.join(root, "info", fname), "w") as f:
            f.write("\n".join(names) + "\n")
    save_mat(os.path.join(root, "info", "tracks_train_info.mat"), {"track_train_info": train_rows}, compress)
    save_mat(os.path.join(root, "info", "tracks_test_info.mat"), {"track_test_info": test_rows}, compress)
    query = np.array([[1 + 3 * i for i in range(len(test_ids))]], dtype=np.float64)  # camera 1 of each test id
    save_mat(os.path.join(root, "info", "query_IDX.mat"), {"query_IDX": query}, compress)
    return root


def keypoints(pid: int, frame: int, size=SIZE) -> np.ndarray:
    """A plausible upright skeleton in pixels ([16, 2]) that sways with the frame."""
    h, w = size
    base = np.array([[0.5, 0.08], [0.5, 0.18], [0.45, 0.07], [0.55, 0.07], [0.35, 0.22], [0.3, 0.38], [0.28, 0.5],
                     [0.65, 0.22], [0.7, 0.38], [0.72, 0.5], [0.6, 0.55], [0.6, 0.75], [0.6, 0.95], [0.4, 0.55],
                     [0.4, 0.75], [0.4, 0.95]])
    sway = 0.03 * np.sin(frame + pid)
    return (base + [sway, 0]) * [w, h]


def make_fgpr(root, groups=("blue", "white"), ids_per_group=4, frames=6, with_keypoints=True):
    """FGPR layout: <group>/<camera>/<pid>/<frames> (+ keypoints.txt), pids unique across groups."""
    pid = 0
    for g, group in enumerate(groups):
        for _ in range(ids_per_group):
            pid += 1
            for c, cam in enumerate((f"cam{2 * g + 1}", f"cam{2 * g + 2}")):
                folder = os.path.join(root, group, cam, f"{pid:04d}")
                os.makedirs(folder, exist_ok=True)
                lines = []
                for f in range(frames):
                    fname = f"{f:06d}.jpg"
                    person(pid, c + 1, f).save(os.path.join(folder, fname))
                    kp = keypoints(pid, f)
                    if f == 0:
                        kp[2:4] = -1  # eyes not found in the first frame
                    lines.append(fname + " " + " ".join(f"{v:.1f}" for v in kp.ravel()) + "\n")
                if with_keypoints:
                    with open(os.path.join(folder, "keypoints.txt"), "w") as fh:
                        fh.writelines(lines)
    return root
