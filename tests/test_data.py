"""Dataset readers (every layout, generated on disk), the P×K sampler and the augmentations."""

import os
from collections import Counter

import numpy as np
import pytest
import torch

from python_models import _matfile
from python_models.datasets import (ImageDataset, PKSampler, SegmentDataset, fgpr, load_dataset, mars,
                                    market_layout, msmt17, parse_market_name)
from python_models.fg_video import FLIP_JOINTS, JOINTS
from python_models.transforms import ImageTransform, SegmentTransform, flip_box, random_erasing, to_tensor

from reid_fixtures import make_fgpr, make_market, make_mars, make_msmt_lists, person


@pytest.fixture(scope="module")
def market_root(tmp_path_factory):
    return make_market(str(tmp_path_factory.mktemp("market")))


@pytest.fixture(scope="module")
def fgpr_root(tmp_path_factory):
    return make_fgpr(str(tmp_path_factory.mktemp("fgpr")))


@pytest.mark.parametrize("name, expected", [
    ("0002_c1s1_000451_03.jpg", (2, 0)),
    ("-1_c3s2_000001_00.jpg", (-1, 2)),
    ("0000_c6s1_000001_00.jpg", (0, 5)),
    ("0001_c2_f0046182.jpg", (1, 1)),
    ("0123_c15_0001.jpg", (123, 14)),
])
def test_parse_market_name(name, expected):
    assert parse_market_name(name) == expected


def test_parse_market_name_rejects_other_names():
    with pytest.raises(ValueError, match="convention"):
        parse_market_name("img_0001.jpg")


def test_market_layout(market_root):
    data = market_layout(market_root)
    assert data.num_train_pids == 8 and len(data.train) == 8 * 3 * 2
    assert sorted({s.pid for s in data.train}) == list(range(8))  # relabeled
    assert {s.camid for s in data.train} == {0, 1, 2}
    assert len(data.query) == 4 and {s.camid for s in data.query} == {0}
    gallery_pids = Counter(s.pid for s in data.gallery)
    assert -1 not in gallery_pids and gallery_pids[0] == 1  # junk dropped, distractor kept
    assert len(data.gallery) == 4 * 2 * 2 + 1
    assert len(data.boxes) == len(data.train)


def test_duke_names(tmp_path):
    data = load_dataset("dukemtmc", make_market(str(tmp_path), train_ids=range(1, 3), test_ids=range(3, 4),
                                                style="duke", boxes=False))
    assert data.name == "dukemtmc" and data.num_train_pids == 2 and not data.boxes
    assert {s.camid for s in data.gallery} == {1, 2}


def test_msmt17_list_layout(tmp_path):
    data = msmt17(make_msmt_lists(str(tmp_path)))
    assert data.num_train_pids == 4 and len(data.train) == 8
    assert [s.camid for s in data.query] == [0, 0] and [s.camid for s in data.gallery] == [1, 1]
    assert all(os.path.isfile(s.path) for s in data.train + data.query + data.gallery)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="bounding_box_train"):
        market_layout(str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cuhk03", str(tmp_path))


@pytest.mark.parametrize("compress", [False, True])
def test_matfile_roundtrip(tmp_path, compress):
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    b = np.array([[1, 2, 3]], dtype=np.int32)
    path = tmp_path / "x.mat"
    _matfile.save_mat(path, {"a": a, "b": b}, compress)
    out = _matfile.load_mat(path)
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)


def test_matfile_rejects_other_files(tmp_path):
    (tmp_path / "x.mat").write_bytes(b"\x89HDF\r\n" + b"\0" * 200)
    with pytest.raises(ValueError, match="not a MATLAB v5"):
        _matfile.load_mat(tmp_path / "x.mat")


@pytest.mark.parametrize("compress", [False, True])
def test_mars_layout(tmp_path, compress):
    data = mars(make_mars(str(tmp_path), compress=compress))
    assert data.num_train_pids == 4 and len(data.train) == 8
    assert len(data.query) == 3 and len(data.gallery) == 6
    assert {t.camid for t in data.query} == {0} and {t.camid for t in data.gallery} == {1, 2}
    assert all(len(t.frames) == 5 and all(os.path.isfile(f) for f in t.frames) for t in data.train)
    q = data.query[1]
    assert os.path.basename(q.frames[0]) == f"{q.pid:04d}C1T{4:04d}F001.jpg"


def test_fgpr_layout_split_and_keypoints(fgpr_root):
    data = fgpr(fgpr_root, split=0, num_test_ids=4)
    assert len({t.pid for t in data.query}) == 4 and data.num_train_pids == 4
    assert {t.group for t in data.query + data.train} <= {"blue", "white"}
    assert len({t.camid for t in data.query + data.train}) <= 4
    t = data.query[0]
    assert t.keypoints.shape == (6, 16, 2) and (t.keypoints[0, 2:4] == -1).all() and (t.keypoints[1] >= 0).all()
    assert fgpr(fgpr_root, split=0, num_test_ids=4).query[0].pid == t.pid  # the seed fixes the split
    with open(os.path.join(fgpr_root, "splits.txt"), "w") as f:
        f.write("test 1\ntest 5\n")
    try:
        data = fgpr(fgpr_root)
        assert {t.pid for t in data.query} == {1, 5} and data.num_train_pids == 6
    finally:
        os.remove(os.path.join(fgpr_root, "splits.txt"))


def test_fgpr_needs_two_cameras(tmp_path):
    os.makedirs(tmp_path / "blue" / "cam1" / "0001")
    with pytest.raises(ValueError, match="two camera"):
        fgpr(str(tmp_path))


def test_image_dataset_items(market_root):
    data = market_layout(market_root)
    ds = ImageDataset(data.train, ImageTransform(64, 32, train=False), data.boxes)
    x, pid, camid, box = ds[0]
    assert x.shape == (3, 64, 32) and x.dtype == torch.float32
    torch.testing.assert_close(box, torch.tensor([2 / 16, 0.0, 14 / 16, 10 / 32]))
    _, _, _, no_box = ImageDataset(data.query, ImageTransform(64, 32))[0]
    assert torch.isnan(no_box).all()


def test_to_tensor_matches_pixels():
    img = person(3, 1, 0)
    x = to_tensor(img)
    ref = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x, ref)


def test_flip_moves_the_box():
    torch.testing.assert_close(flip_box(torch.tensor([0.1, 0.2, 0.3, 0.4])), torch.tensor([0.7, 0.2, 0.9, 0.4]))
    t = ImageTransform(32, 16, train=True, flip_p=1.0, erase_p=0.0)
    img = person(1, 1, 0)
    x, box = t(img, torch.tensor([0.0, 0.0, 0.25, 0.5]))
    torch.testing.assert_close(x, ImageTransform(32, 16)(img)[0].flip(-1))
    torch.testing.assert_close(box, torch.tensor([0.75, 0.0, 1.0, 0.5]))


def test_random_erasing():
    x = torch.ones(3, 40, 20)
    assert random_erasing(x, p=0.0) is x
    torch.manual_seed(0)
    erased = [random_erasing(x, p=1.0) for _ in range(20)]
    for e in erased:
        zero = e[0] == 0
        assert (e == 0).sum() > 0 and torch.equal(e[0] == 0, e[2] == 0)  # one rectangle on all channels
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        area = len(rows) * len(cols)
        assert zero.sum() == area and 0.02 * 800 * 0.5 <= area <= 0.4 * 800 * 1.5
    assert (x == 1).all()  # the input is not modified


def test_segment_dataset_random_and_all(fgpr_root):
    data = fgpr(fgpr_root, num_test_ids=4)
    train = SegmentDataset(data.train, SegmentTransform(32, 32), seq_len=4, mode="random")
    x, kp, pid, camid, index = train[0]
    assert x.shape == (4, 3, 32, 32) and kp.shape == (4, 16, 2) and index == 0
    valid = kp[kp >= 0]
    assert valid.numel() > 0 and valid.max() <= 1.0
    test = SegmentDataset(data.query, SegmentTransform(32, 32), seq_len=4, mode="all")
    assert len(test) == len(data.query)  # 6 frames: one full segment of 4 each
    long = SegmentDataset(data.query, SegmentTransform(32, 32), seq_len=3, mode="all")
    assert len(long) == 2 * len(data.query)
    short = SegmentDataset(data.query, SegmentTransform(32, 32), seq_len=8, mode="all")
    x, *_ = short[0]
    torch.testing.assert_close(x[-1], x[5])  # padded by repeating the last frame


def test_segment_flip_mirrors_keypoints():
    assert sorted(FLIP_JOINTS) == list(range(16))
    for i, j in enumerate(FLIP_JOINTS):
        assert JOINTS[i].replace("left", "L").replace("right", "left").replace("L", "right") == JOINTS[j]
    frames = [person(1, 1, 0)] * 2
    kp = torch.rand(2, 16, 2)
    kp[0, 3] = -1
    x, out = SegmentTransform(32, 16, train=True, flip_p=1.0)(frames, kp)
    assert (out[0, 2] == -1).all()  # right eye (3) missing → after the flip the left eye (2) is
    torch.testing.assert_close(out[1, 4, 0], 1 - kp[1, 7, 0])  # left shoulder → right shoulder, mirrored
    torch.testing.assert_close(x[0], SegmentTransform(32, 16)(frames, kp)[0][0].flip(-1))


def test_pk_sampler_batches():
    pids = [0] * 7 + [1] * 4 + [2] * 2 + [3] * 5 + [4] * 1 + [5] * 9
    sampler = PKSampler(pids, p=3, k=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) >= 2
    for b in batches:
        assert len(b) == 12
        counts = Counter(pids[i] for i in b)
        assert len(counts) == 3 and set(counts.values()) == {4}
    assert list(sampler) != batches  # a new shuffle each epoch
    sampler.set_epoch(0)
    assert list(sampler) == batches
    with pytest.raises(ValueError, match="fewer than P"):
        PKSampler([0, 0, 1], p=3, k=2)
