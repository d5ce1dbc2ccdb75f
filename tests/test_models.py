"""python_models: ResNet-50 keys and sizes, CUHS and the FG video model (shapes, paper details,
kernels vs fgreid_ops.use_reference(), torch.compile without graph breaks), training that
learns a toy set, and the evaluation protocols end to end. Models are narrow (width 8, one
block per stage) and inputs small, so the file runs in seconds on 2 CPU cores; the full-size
models are only constructed (on the meta device) to count parameters."""

import copy
import json
import math
import os

import pytest
import torch

import fgreid_ops
from python_models import evaluate, train
from python_models.cuhs import CUHS, HSL, cuhs_loss, hsl_loss, parameter_report, params_to_box
from python_models.datasets import Tracklet
from python_models.fg_video import FGVideoNet, body_parts, crop, fg_distance, fg_video_loss, part_boxes
from python_models.resnet import ResNet, resnet50

from reid_fixtures import keypoints as skeleton, make_fgpr, make_market, make_mars

TINY_CUHS = dict(feat_dim=16, width=8, layers=(1, 1, 2, 1), topk=2)
TINY_VIDEO = dict(width=8, layers=(1, 1, 1, 1), delta_t=2, mask_size=(2, 2), mask_channels=4, lstm_hidden=16,
                  part_size=16, part_channels=(4, 4, 8, 8, 8), js_dim=16)
TINY_ARGS = ["--backbone-width", "8", "--backbone-layers", "1", "1", "2", "1", "--workers", "0", "--device", "cpu",
             "--eval-every", "0", "--save-every", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the CI box is shared: one intra-op thread is faster than two fighting for the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cuhs(num_classes=4, **kw):
    torch.manual_seed(0)
    return CUHS(num_classes, **{**TINY_CUHS, **kw})


def tiny_video(num_classes=4, **kw):
    torch.manual_seed(0)
    return FGVideoNet(num_classes, **{**TINY_VIDEO, **kw})


def video_inputs(n=2, t=4, size=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, t, 3, size, size, generator=g, dtype=dtype)
    kp = torch.stack([torch.stack([torch.from_numpy(skeleton(i, f, (size, size))).to(dtype) / size
                                   for f in range(t)]) for i in range(n)])
    kp[0, 0, 2:4] = -1
    return x, kp


# ------------------------------------------------------------------------------------------ ResNet

def torchvision_resnet50_keys():
    """The state_dict keys of torchvision.models.resnet50(), transcribed from its ResNet /
    _make_layer / Bottleneck definitions (torchvision/models/resnet.py)."""
    norm = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{n}" for n in norm]
    for layer, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            for i in (1, 2, 3):
                keys += [f"{p}.conv{i}.weight"] + [f"{p}.bn{i}.{n}" for n in norm]
            if b == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{n}" for n in norm]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet50_matches_torchvision_keys_shapes_and_size():
    with torch.device("meta"):
        model = resnet50()
    sd = model.state_dict()
    assert list(sd) == torchvision_resnet50_keys()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50
    assert sd["layer4.0.conv2.weight"].shape == (512, 512, 3, 3)
    assert sd["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert sd["fc.weight"].shape == (1000, 2048)


@pytest.mark.parametrize("last_stride", [2, 1])
def test_resnet_levels_and_last_stride(last_stride):
    model = ResNet((1, 1, 1, 1), num_classes=None, last_stride=last_stride, width=8).eval()
    levels = model(torch.randn(2, 3, 64, 32), levels=True)
    expected = [(8, 32, 16), (32, 16, 8), (64, 8, 4), (128, 4, 2), (256, 4 // last_stride, 2 // last_stride)]
    assert [tuple(t.shape[1:]) for t in levels] == expected
    torch.testing.assert_close(model(torch.randn(2, 3, 64, 32)).shape, levels[-1].shape)


def test_resnet_loads_a_torchvision_state_dict():
    src = ResNet((1, 1, 1, 1), num_classes=1000, width=8)
    dst = ResNet((1, 1, 1, 1), num_classes=None, width=8, last_stride=1)
    dst.load_torchvision(src.state_dict())
    torch.testing.assert_close(dst.layer4[0].conv2.weight, src.layer4[0].conv2.weight)
    with pytest.raises(ValueError, match="last_stride"):
        ResNet(last_stride=3)


# -------------------------------------------------------------------------------------------- CUHS

def test_cuhs_parameter_count_vs_paper():
    """The paper reports 342.3 MB (Table 2, FG-reID: 1,241 training identities)."""
    with torch.device("meta"):
        model = CUHS(1241)
    report = parameter_report(model)
    assert report["parameters"] == 85_363_909
    assert abs(report["MB"] - 342.3) / 342.3 < 0.01  # 341.5 MB float32
    with torch.device("meta"):
        four_copies = report["parameters"] + sum(p.numel() for p in CUHS(1241).in_stream.parameters())
    assert abs(four_copies * 4e-6 - 342.3) / 342.3 > 0.2  # a separate IN block per branch would not match


def test_cuhs_outputs():
    model = tiny_cuhs(num_classes=5)
    x = torch.randn(4, 3, 64, 32)
    out = model(x)
    assert [f.shape for f in out["features"]] == [(4, 16)] * 4
    assert [lg.shape for lg in out["logits"]] == [(4, 5)] * 4
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0.0, 1.0, 1 / 3]]).expand(4, 4))  # the prior
    model.eval()
    feats = model(x)
    assert feats.shape == (4, 64)
    with pytest.raises(ValueError, match="layers"):
        CUHS(3, layers=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="topk"):
        CUHS(3, topk=-1, **{k: v for k, v in TINY_CUHS.items() if k != "topk"})


def test_cuhs_topk_masks_the_second_in_branch():
    """k = 0: both IN branches see the same map; k = H·W: the second sees zeros."""
    x = torch.randn(3, 3, 64, 32)
    for k, same in ((0, True), (8, False)):
        model = tiny_cuhs(topk=k).eval()
        model.reduce["in2"].load_state_dict(model.reduce["in1"].state_dict())
        f = model(x).view(3, 4, 16)
        assert torch.allclose(f[:, 1], f[:, 2]) == same
    model = tiny_cuhs(topk=8).eval()  # the IN map is 4×2 at 64×32 with last stride 1
    f = model(x).view(3, 4, 16)
    bn = model.reduce["in2"][1]
    torch.testing.assert_close(f[:, 2], (-bn.running_mean / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias)
                               .expand(3, 16))


def test_cuhs_loads_imagenet_resnet_weights():
    src = ResNet((1, 1, 2, 1), num_classes=1000, width=8)
    model = tiny_cuhs()
    missing = model.load_backbone(src.state_dict())
    assert missing and all(k.split(".")[0] in ("hsl", "han", "gem", "reduce", "classifiers") for k in missing)
    torch.testing.assert_close(model.base.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    for stream in (model.bn_stream, model.in_stream, model.hs_stream):
        torch.testing.assert_close(getattr(stream.layer3, "1").conv2.weight, src.layer3[1].conv2.weight)
        torch.testing.assert_close(stream.layer4[0].bn3.weight, src.layer4[0].bn3.weight)
    assert isinstance(model.in_stream.layer4[0].bn1, torch.nn.InstanceNorm2d)
    torch.testing.assert_close(model.bn_stream.layer4[0].bn1.running_var, src.layer4[0].bn1.running_var)


def test_hsl_crop_box_and_freeze():
    hsl = HSL(channels=2, out_size=(2, 2))
    f = torch.arange(2 * 6 * 4, dtype=torch.float32).view(1, 2, 6, 4).requires_grad_()
    with torch.no_grad():
        hsl.fc.bias.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0]))  # identity θ: the whole map
    out, box = hsl(f)
    torch.testing.assert_close(out, torch.nn.functional.adaptive_avg_pool2d(f, (2, 2)))  # bilinear at cell centres
    torch.testing.assert_close(box, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(params_to_box(torch.tensor([[0.5, 0.25, 0.5, -0.5]])),
                               torch.tensor([[0.5, 0.125, 1.0, 0.375]]))
    hsl.frozen = True
    out, box = hsl(f)
    assert not box.requires_grad or box.grad_fn is not None
    box.sum().backward()
    assert f.grad is None or (f.grad == 0).all()  # the box no longer reaches the features


def test_cuhs_freeze_hsl_and_losses():
    model = tiny_cuhs()
    model.freeze_hsl()
    out = model(torch.randn(4, 3, 64, 32))
    labels = torch.tensor([0, 0, 1, 1])
    loss, parts = cuhs_loss(out, labels)
    loss.backward()
    assert model.hsl.fc.weight.grad is None and model.hs_stream.layer4[0].conv1.weight.grad is not None
    torch.testing.assert_close(loss.detach(), parts["ce"] + parts["triplet"])
    gt = torch.tensor([[0.0, 0.0, 1.0, 0.5], [float("nan")] * 4])
    pred = torch.tensor([[0.0, 0.0, 1.0, 0.25], [0.3, 0.3, 0.3, 0.3]])
    torch.testing.assert_close(hsl_loss(pred, gt), torch.tensor(0.0625))


# -------------------------------------------------------------------------------------- FG video

def test_fg_video_outputs():
    model = tiny_video(num_classes=3)
    x, kp = video_inputs()
    out = model(x, kp)
    feats = out["features"]
    c = (8, 32, 64, 128, 256)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "global": (2, 256), "motion": (2, sum(c)), "ma": (2, sum(c)), "js": (2, 16)}
    assert all(v.shape == (2, 3) for v in out["logits"].values())
    loss, parts = fg_video_loss(out, torch.tensor([0, 2]))
    torch.testing.assert_close(loss.detach(), sum(parts.values()))
    model.eval()
    assert set(model(x, kp)) == {"global", "motion", "ma", "js"}
    with pytest.raises(ValueError, match="keypoints"):
        model(x)
    with pytest.raises(ValueError, match="T > 2"):
        model(x[:, :2], kp[:, :2])
    no_joints = tiny_video(joint_stream=False).eval()
    assert set(no_joints(x)) == {"global", "motion", "ma"}


def test_fg_video_masks_follow_eq_2_and_3():
    """o_i = GAP(s(α m_i + (1−α) m_5) ⊙ f_gi): recompute the MA feature from the model's parts."""
    model = tiny_video(joint_stream=False).eval()
    x, _ = video_inputs(n=1, t=3)
    with torch.no_grad():
        levels = model.backbone(x.flatten(0, 1), levels=True)
        maps = [conv(fgreid_ops.off(l[None], stride=2)[0]) for l, conv in zip(levels, model.motion)]
        state, masks = (torch.zeros(1, 16), torch.zeros(1, 16)), []
        for m, phi in zip(maps, model.phi):
            state = model.lstm(phi(torch.nn.functional.adaptive_avg_pool2d(m, (2, 2))).flatten(1), state)
            masks.append(torch.sigmoid(model.mask_head(state[0])).view(1, 1, 2, 2))
        expected = []
        for lvl, m in zip(levels, masks):
            up = torch.nn.functional.interpolate(0.2 * m + 0.8 * masks[-1], size=lvl.shape[-2:], mode="bilinear")
            expected.append((lvl[:1] * up).mean(dim=(2, 3)))
        torch.testing.assert_close(model(x)["ma"], torch.cat(expected, 1), rtol=1e-5, atol=1e-6)


def test_part_boxes_and_crops():
    kp = torch.from_numpy(skeleton(0, 0, (1, 1))).float()[None]  # normalized coordinates
    boxes = part_boxes(kp, margin=0.0, min_size=0.0)
    head = kp[0, [0, 1, 2, 3]]
    torch.testing.assert_close(boxes["head"][0], torch.cat([head.min(0).values, head.max(0).values]))
    missing = kp.clone()
    missing[0, [10, 11, 12, 13, 14, 15]] = -1
    torch.testing.assert_close(part_boxes(missing)["legs"][0], torch.tensor([0.1, 0.5, 0.9, 1.0]))
    img = torch.zeros(1, 3, 8, 8)
    img[..., :4, 4:] = 1.0  # the top-right quadrant
    torch.testing.assert_close(crop(img, torch.tensor([[0.5, 0.0, 1.0, 0.5]]), (4, 4)), torch.ones(1, 3, 4, 4))
    parts = body_parts(torch.randn(2, 3, 32, 32), torch.rand(2, 16, 2), size=16)
    assert [tuple(p.shape) for p in parts] == [(2, 3, 16, 16)] * 4


def test_fg_distance_is_eq_4():
    g = torch.Generator().manual_seed(0)
    q = {k: torch.randn(3, 5, generator=g) for k in ("global", "motion", "ma", "js")}
    gal = {k: torch.randn(4, 5, generator=g) for k in ("global", "motion", "ma", "js")}
    expected = sum(((q[k][:, None] - gal[k][None]) ** 2).sum(-1).sqrt() for k in q)
    torch.testing.assert_close(fg_distance(q, gal), expected)
    del q["js"]
    torch.testing.assert_close(fg_distance(q, gal), sum(torch.cdist(q[k], gal[k]) for k in ("global", "motion", "ma")))


# ------------------------------------------------------------------- kernels vs reference, compile

def _run(model, inputs, labels, loss_fn):
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    loss, _ = loss_fn(out, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = {
    "cuhs": (lambda: tiny_cuhs().double(), lambda: (torch.randn(4, 3, 64, 32, dtype=torch.float64),), cuhs_loss,
             torch.tensor([0, 0, 1, 1])),
    "fg_video": (lambda: tiny_video().double(), lambda: video_inputs(dtype=torch.float64), fg_video_loss,
                 torch.tensor([0, 1])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_small_gradient_step_lowers_the_loss(name):
    """The deterministic core of "it trains": in float64, a step of length 1e-6 against the
    gradient of the whole model + loss lowers that batch's loss by about 1e-6 * |g| (first order),
    far above float64 rounding and independent of summation order or vector width — unlike a
    loss drop over many SGD steps, which depends on the float order of every step before."""
    make, inputs, loss_fn, labels = CASES[name]
    model, x = make(), inputs()
    loss, grads = _run(model, x, labels, loss_fn)
    norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
    assert torch.isfinite(loss) and norm > 1e-3
    step = 1e-6
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in grads:
                p -= step * grads[n] / norm
    after, _ = _run(model, x, labels, loss_fn)
    decrease = float(loss - after)
    assert 0.5 * step * float(norm) < decrease < 1.5 * step * float(norm), (decrease, float(norm))


def _moved_parameters(args, ckpt):
    """Names of the floating-point state entries that training changed from their seeded init."""
    cfg = train.parse_args(args)
    torch.manual_seed(cfg["seed"])
    data = train.load_dataset(cfg["dataset"], cfg["root"], split=cfg["split"])
    init = train.build_model(cfg, data.num_train_pids).state_dict()
    return {k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.equal(v, init[k])}


@pytest.mark.parametrize("name", list(CASES))
def test_same_outputs_and_gradients_with_use_reference(name):
    make, inputs, loss_fn, labels = CASES[name]
    model, x = make(), inputs()
    loss, grads = _run(model, x, labels, loss_fn)
    with fgreid_ops.use_reference():
        ref_loss, ref_grads = _run(model, x, labels, loss_fn)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-10)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-7, atol=1e-9, msg=n)


COMPILE_CASES = {
    "cuhs": (tiny_cuhs, lambda: (torch.randn(4, 3, 64, 32),)),
    # the joint-specific stream holds no fgreid op (convs and grid_sample only): left out to save time
    "fg_video": (lambda: tiny_video(joint_stream=False), lambda: video_inputs()[:1]),
}


@pytest.mark.parametrize("name", list(COMPILE_CASES))
def test_compile_fullgraph(name):
    """torch.compile(fullgraph=True) traces the training forward of each model in one graph — no
    break inside our ops — and matches eager. The "eager" backend runs Dynamo only, which is what
    decides graph breaks; the ops' fakes and autograd under AOTAutograd/Inductor are tested per op,
    and the bench compiles the full models with Inductor."""
    make, inputs = COMPILE_CASES[name]
    model, x = make(), inputs()
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(model), backend="eager", fullgraph=True)
    out, out_c = model(*x), compiled(*x)
    flat = torch.utils._pytree.tree_leaves(out)
    flat_c = torch.utils._pytree.tree_leaves(out_c)
    assert len(flat) == len(flat_c) > 4
    for a, b in zip(flat, flat_c):
        torch.testing.assert_close(b, a)


# ------------------------------------------------------------------------- training, evaluation

@pytest.fixture(scope="module")
def market_root(tmp_path_factory):
    return make_market(str(tmp_path_factory.mktemp("market")))


def test_cuhs_trains_and_evaluates(market_root, tmp_path):
    out_dir = str(tmp_path / "run")
    args = ["--dataset", "market1501", "--root", market_root, "--output", out_dir, "--height", "64", "--width", "32",
            "--feat-dim", "16", "--p", "4", "--k", "2", "--epochs", "3", "--hsl-epochs", "1", "--lr", "3e-3",
            "--milestones", "2", *TINY_ARGS]
    result = train.main(args)
    hsl, main = result["history"]["hsl"], result["history"]["main"]
    assert 1 <= len(hsl) <= 6 and 10 <= len(main) <= 18  # at most 48 images / 8 per batch and epoch
    # that the model learns is test_a_small_gradient_step_lowers_the_loss; a loss drop over these
    # few steps depends on float order (it failed on AVX-512), so here: finite, and every stream moved
    assert all(map(math.isfinite, hsl + main)), (hsl, main)
    m = result["metrics"]
    assert len(m["cmc"]) == 17 and 0 <= m["mAP"] <= 1 and m["cmc"] == sorted(m["cmc"])
    ckpt = torch.load(os.path.join(out_dir, "last.pt"), weights_only=False)
    assert ckpt["epoch"] == 3 and ckpt["stage"] == "main" and ckpt["config"]["topk"] is None
    assert ckpt["model"]["hsl.fc.weight"].abs().sum() > 0  # stage 1 moved the box ...
    moved = _moved_parameters(args, ckpt)
    for prefix in ("bn_stream.", "in_stream.", "hs_stream.", "classifiers.", "reduce."):
        assert any(k.startswith(prefix) for k in moved), (prefix, sorted(moved)[:10])
    again = evaluate.main(["--checkpoint", os.path.join(out_dir, "last.pt"), "--workers", "0", "--device", "cpu",
                           "--json", str(tmp_path / "m.json")])
    assert again["cmc"] == pytest.approx(m["cmc"]) and again["mAP"] == pytest.approx(m["mAP"])
    assert json.load(open(tmp_path / "m.json"))["mAP"] == pytest.approx(m["mAP"])
    # resume: the saved epoch is the last one, so nothing more runs and the checkpoint is kept
    resumed = train.main(args + ["--resume", "--no-eval"])
    assert resumed["history"]["main"] == []


def test_fg_video_trains_on_fgpr_and_evaluates(tmp_path):
    root = make_fgpr(str(tmp_path / "fgpr"), ids_per_group=4, frames=5)
    args = ["--dataset", "fgpr", "--root", root, "--output", str(tmp_path / "run"), "--height", "32", "--width", "32",
            "--seq-len", "3", "--delta-t", "2", "--part-size", "16", "--mask-size", "2", "2", "--p", "2", "--k", "2",
            "--epochs", "6", "--max-steps", "2", "--optimizer", "adam", "--lr", "1e-3", "--split", "3",
            "--backbone-width", "8", "--backbone-layers", "1", "1", "1", "1", *TINY_ARGS[7:]]
    result = train.main(args)
    losses = result["history"]["main"]
    assert len(losses) == 12 and all(map(math.isfinite, losses)), losses
    moved = _moved_parameters(args, torch.load(os.path.join(str(tmp_path / "run"), "last.pt"), weights_only=False))
    assert any(k.startswith("backbone.") for k in moved) and len(moved) > 20, sorted(moved)[:10]
    metrics = result["metrics"]
    assert set(metrics) == {"all", "blue", "white"}
    for m in metrics.values():
        assert len(m["cmc"]) >= 1 and 0 <= m["mAP"] <= 1


def test_mars_protocol_on_tracklet_features(tmp_path):
    from python_models.datasets import mars

    data = mars(make_mars(str(tmp_path)))
    model = tiny_video(num_classes=data.num_train_pids, joint_stream=False, delta_t=1)
    cfg = {"height": 32, "width": 16, "seq_len": 2}
    metrics = evaluate.evaluate_model(model, data, cfg, "cpu", workers=0)
    assert len(metrics["cmc"]) == 6 and 0 < metrics["mAP"] <= 1


def test_protocols_on_known_features():
    q = [Tracklet([], pid, 0, g) for pid, g in ((1, "a"), (2, "a"), (3, "b"))]
    gal = [Tracklet([], pid, 1, g) for pid, g in ((1, "a"), (2, "a"), (3, "b"))]
    feats = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    m = evaluate.market_protocol(feats, feats, q, gal)
    assert m["mAP"] == pytest.approx(1.0) and m["cmc"][0] == pytest.approx(1.0)
    swapped = evaluate.market_protocol(feats, feats[[1, 0, 2]], q, gal)
    assert swapped["cmc"][0] == pytest.approx(1 / 3) and swapped["mAP"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    tracks = q + gal
    both = torch.cat([feats, feats[[1, 0, 2]]])
    fg = evaluate.fgpr_protocol(both, tracks)
    assert set(fg) == {"all", "a", "b"}
    assert fg["b"]["cmc"][0] == pytest.approx(1.0)
    assert fg["a"]["cmc"][0] == pytest.approx(0.0) and fg["a"]["mAP"] == pytest.approx(0.5)
    assert fg["all"]["cmc"][0] == pytest.approx(1 / 3)


def test_scale_translate_grid_is_affine_grid():
    from python_models.cuhs import scale_translate_grid

    p = torch.randn(3, 4, dtype=torch.float64)
    z = torch.zeros(3, dtype=torch.float64)
    theta = torch.stack([torch.stack([p[:, 0], z, p[:, 2]], 1), torch.stack([z, p[:, 1], p[:, 3]], 1)], 1)
    torch.testing.assert_close(scale_translate_grid(p, (5, 4)), torch.nn.functional.affine_grid(
        theta, [3, 1, 5, 4], align_corners=False))


def test_train_rejects_a_model_dataset_mismatch(tmp_path):
    with pytest.raises(ValueError, match="does not read"):
        train.parse_args(["--dataset", "mars", "--root", str(tmp_path), "--model", "cuhs"])
    cfg = train.parse_args(["--dataset", "market1501", "--root", str(tmp_path)])
    assert (cfg["model"], cfg["lr"], cfg["milestones"], cfg["p"] * cfg["k"], cfg["height"], cfg["width"]) == \
        ("cuhs", 3e-4, [40, 70], 64, 384, 128)
    assert (cfg["epochs"], cfg["hsl_epochs"], cfg["margin"], cfg["feat_dim"], cfg["weight_decay"]) == (90, 50, 0.3, 1536, 5e-4)
