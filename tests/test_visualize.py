"""python_models.visualize: ranked-list strips (sizes, border colours, protocol, ties) and curves."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from python_models import visualize
from python_models.datasets import ReidData, Sample, Tracklet
from reid_fixtures import person

H, W = 64, 32


@pytest.fixture
def images(tmp_path):
    def make(pid, cam, idx):
        path = str(tmp_path / f"{pid:04d}_c{cam}_{idx}.jpg")
        person(pid, cam, idx).save(path)
        return Sample(path, pid, cam)
    return make


def border(strip: Image.Image, left: int) -> tuple:
    """The colour of a cell's top-left border pixel, checked on all four sides."""
    px = np.asarray(strip)
    colours = {tuple(px[1, left + 1]), tuple(px[H - 2, left + W - 2]), tuple(px[H // 2, left + 1]),
               tuple(px[1, left + W // 2])}
    assert len(colours) == 1, colours
    return colours.pop()


def test_strip_layout_colours_protocol_and_ties(images, tmp_path):
    query = [images(1, 0, 0)]
    # gallery: 0 same pid and camera (left out), 1 match, 2/3 non-matches tied at 0.5, 4 match
    gallery = [images(1, 0, 1), images(1, 1, 0), images(2, 1, 0), images(3, 0, 0), images(1, 2, 0)]
    distmat = torch.tensor([[0.0, 0.9, 0.5, 0.5, 0.1]])
    index = visualize.write_ranked_results(distmat, query, gallery, str(tmp_path / "out"), topk=10, size=(H, W))
    assert [e["gallery"] for e in index] == [[gallery[i].path for i in (4, 2, 3, 1)]]
    assert index[0]["match"] == [True, False, False, True]
    assert index[0]["distance"] == pytest.approx([0.1, 0.5, 0.5, 0.9])
    strip = Image.open(tmp_path / "out" / index[0]["strip"]).convert("RGB")
    assert strip.size == (visualize.strip_width(10, W), H) == (11 * W + visualize.QUERY_GAP + 9 * visualize.GAP, H)
    assert border(strip, 0) == visualize.QUERY
    expected = [visualize.MATCH, visualize.NON_MATCH, visualize.NON_MATCH, visualize.MATCH]
    assert [border(strip, visualize.cell_left(r, W)) for r in range(4)] == expected
    # fewer than top-10 kept: the remaining cells stay white
    assert np.all(np.asarray(strip)[:, visualize.cell_left(4, W):] == 255)
    # the image itself is inside the border
    inner = np.asarray(strip)[visualize.BORDER:H - visualize.BORDER, visualize.BORDER:W - visualize.BORDER]
    assert inner.std() > 10


def test_rank_visualizer_chunks_num_queries_and_video_items(images, tmp_path):
    gallery = [images(p, 1, i) for p in range(1, 7) for i in range(2)]
    query = [images(p, 0, 9) for p in range(1, 6)]
    g = torch.randn(len(gallery), 4)
    q = g[::2][:5] + 0.01  # each query sits next to its identity's first gallery image
    data = ReidData("market1501", str(tmp_path), [], query, gallery)
    visualize.rank_visualizer(data, str(tmp_path / "r"), num_queries=3, topk=4, chunk=2)(q, g)
    index = json.load(open(tmp_path / "r" / "ranks.json"))
    assert [e["strip"][:5] for e in index] == ["00000", "00001", "00002"]
    assert sorted(os.listdir(tmp_path / "r")) == sorted([e["strip"] for e in index] + ["ranks.json"])
    for e in index:
        assert e["match"][0] and e["gallery"][0] == gallery[2 * e["pid"] - 2].path
        strip = Image.open(tmp_path / "r" / e["strip"])
        assert strip.size == (visualize.strip_width(4, 128), 256)
    # tracklets show their middle frame
    t = Tracklet([gallery[0].path, gallery[1].path, gallery[2].path], 1, 0)
    assert visualize._image_path(t) == gallery[1].path


def test_fgpr_split_probes_second_camera_gallery_first():
    ts = [Tracklet([], pid, cam, group) for pid, cam, group in
          [(1, 0, "a"), (1, 1, "a"), (2, 0, "a"), (2, 1, "a"), (3, 2, "b"), (3, 3, "b")]]
    assert visualize.fgpr_split(ts) == ([1, 3, 5], [0, 2, 4])


def test_curves_png(tmp_path):
    result = {"history": {"hsl": [1.0, 0.8], "main": [5.0, 4.0, 3.5]},
              "loss_terms": {"hsl": [{"box L2": 1.0}, {"box L2": 0.8}],
                             "main": [{"ce": 4.0, "triplet": 1.0}, {"ce": 3.2, "triplet": 0.8}, {"ce": 3.0, "triplet": 0.5}]},
              "evaluations": [{"epoch": 1, "metrics": {"cmc": [0.5, 0.7], "mAP": 0.4, "mINP": 0.2}},
                              {"epoch": 2, "metrics": {"all": {"cmc": [0.6], "mAP": 0.5}, "blue": {"cmc": [1], "mAP": 1}}}]}
    path = visualize.write_curves(result, str(tmp_path / "curves.png"))
    img = Image.open(path)
    assert img.size == (1200, 450)
    assert np.asarray(img.convert("L")).std() > 5  # something is drawn
    # a run without evaluations still writes the figure
    result["evaluations"] = []
    assert Image.open(visualize.write_curves(result, str(tmp_path / "c2.png"))).size == (1200, 450)


def test_rank_visualizer_fgpr_with_per_stream_features(images, tmp_path):
    # two groups, two cameras each; the video model's features are a dict per stream (eq. 4 distance)
    frames = {(p, c): [images(p, c, i).path for i in range(3)] for p in range(1, 5) for c in range(4)}
    tracklets = [Tracklet(frames[(p, c)], p, c, "ab"[p > 2]) for p in range(1, 5)
                 for c in ((0, 1) if p <= 2 else (2, 3))]
    feats = {"global": torch.randn(len(tracklets), 3), "motion": torch.randn(len(tracklets), 2)}
    data = ReidData("fgpr", str(tmp_path), [], tracklets, tracklets)
    visualize.rank_visualizer(data, str(tmp_path / "v"), topk=10)(feats, feats)
    index = json.load(open(tmp_path / "v" / "ranks.json"))
    probes, gallery = visualize.fgpr_split(tracklets)
    assert [e["query"] for e in index] == [tracklets[i].frames[1] for i in probes]
    for e in index:  # every gallery tracklet of another camera, ranked by the eq. 4 distance
        assert sorted(e["gallery"]) == sorted(tracklets[j].frames[1] for j in gallery)
        assert e["distance"] == sorted(e["distance"]) and sum(e["match"]) == 1
