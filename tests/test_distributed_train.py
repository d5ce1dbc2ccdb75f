"""Training and evaluation on several ranks (gloo, CPU): 2-rank DDP steps equal one process on both
ranks' batches, and `torchrun` runs python_models.train (with --resume) and
python_models.evaluate end to end, on one node and as two "nodes" through a c10d rendezvous.

Equality by design: float64, --sync-bn (SyncBatchNorm's statistics are those of the whole
batch), the triplet loss mines against the gathered batch, every rank's batch has the same size
(so DDP's gradient average is the gradient of the mean loss) and SGD (Adam would magnify rounding
in near-zero gradients). What is left is float64 rounding."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fgreid_ops import distributed
from python_models import evaluate, train
from python_models.cuhs import CUHS

from distributed_helpers import free_port, needs_gloo, run_ranks
from reid_fixtures import make_market

pytestmark = needs_gloo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = dict(device="cpu", amp=False, model="cuhs", margin=0.3, compile=False, optimizer="sgd", lr=0.05,
           weight_decay=5e-4)
PER_RANK, STEPS, WORLD = 4, 3, 2


def _model():
    torch.manual_seed(0)
    return CUHS(4, feat_dim=16, width=8, layers=(1, 1, 2, 1), topk=2).double()


def _batches():
    """STEPS batches of WORLD × PER_RANK images: 2 images of each of 4 identities; rank r gets
    rows [r·PER_RANK, (r + 1)·PER_RANK) (its own 2 identities)."""
    g = torch.Generator().manual_seed(1)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return [(torch.randn(WORLD * PER_RANK, 3, 64, 32, generator=g, dtype=torch.float64), pids.roll(2 * s), None,
             torch.full((WORLD * PER_RANK, 4), float("nan"))) for s in range(STEPS)]


def _ddp_steps(rank, world, out_path):
    model = distributed.convert_sync_batchnorm(_model())
    runner = train.wrap(model, CFG)
    opt = train.make_optimizer(model, CFG)
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    mine = [(x[rows], pids[rows], None, boxes[rows]) for x, pids, _, boxes in _batches()]
    history = []
    train.run_epoch(runner, mine, opt, CFG, "train", 0, None, history)
    if rank == 0:
        torch.save({"history": history, "state": model.state_dict()}, out_path)


def test_ddp_steps_equal_one_process_on_both_batches(tmp_path):
    out = str(tmp_path / "ddp.pt")
    run_ranks(_ddp_steps, WORLD, out)
    ddp = torch.load(out, weights_only=False)
    model = _model()
    opt = train.make_optimizer(model, CFG)
    history = []
    train.run_epoch(model, _batches(), opt, CFG, "train", 0, None, history)
    assert len(history) == len(ddp["history"]) == STEPS and history[0] != history[-1]
    torch.testing.assert_close(torch.tensor(ddp["history"]), torch.tensor(history), rtol=1e-9, atol=1e-9)
    state = model.state_dict()
    assert state.keys() == ddp["state"].keys()
    moved = 0
    for name, value in state.items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-8, atol=1e-10, msg=name)
        moved += value.dtype.is_floating_point and not torch.equal(value, _model().state_dict()[name])
    assert moved > 10  # the steps did change the weights


def test_rank_batches_are_disjoint_slices_of_one_global_draw():
    from python_models.datasets import PKSampler

    pids = [i // 3 for i in range(30)]  # 10 identities × 3 images
    shared = list(PKSampler(pids, 4, 2, seed=5))
    parts = [list(train.RankBatches(PKSampler(pids, 4, 2, seed=5), r, 2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(shared) > 0
    for whole, a, b in zip(shared, *parts):
        assert a + b == whole and not {pids[i] for i in a} & {pids[i] for i in b}
        assert len({pids[i] for i in a}) == 2 and len(a) == 4


# --- torchrun end to end -----------------------------------------------------------------------

TINY = ["--height", "64", "--width", "32", "--feat-dim", "16", "--p", "2", "--k", "2", "--hsl-epochs", "0",
        "--max-steps", "2", "--optimizer", "sgd", "--lr", "0.01", "--backbone-width", "8",
        "--backbone-layers", "1", "1", "2", "1", "--workers", "0", "--device", "cpu", "--eval-every", "0",
        "--save-every", "0"]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               TRITON_INTERPRET="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(launcher_args, module_args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher_args, *module_args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _same_metrics(got, want):
    assert got.keys() == want.keys() and len(got["cmc"]) == len(want["cmc"])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def _evaluate_one_thread(args):
    """python_models.evaluate in this process with the ranks' one intra-op thread (so the
    features are the ranks' bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate.main(args)
    finally:
        torch.set_num_threads(threads)


def _one_node(n):
    return ["--nproc_per_node", str(n), "--master_addr", "127.0.0.1", "--master_port", str(free_port())]


@pytest.fixture(scope="module")
def market_root(tmp_path_factory):
    return make_market(str(tmp_path_factory.mktemp("market")))


def test_torchrun_trains_resumes_and_evaluates(market_root, tmp_path):
    out = str(tmp_path / "run")
    args = ["-m", "python_models.train", "--dataset", "market1501", "--root", market_root, "--output", out, *TINY,
            "--sync-bn", "--hsl-epochs", "1"]  # both stages
    proc = _torchrun(_one_node(2), args + ["--epochs", "1"])
    assert proc.stderr.count("epoch 1/1: loss") == 1  # rank 0 logs, rank 1 does not
    result = json.load(open(os.path.join(out, "result.json")))
    assert len(result["history"]["hsl"]) == len(result["history"]["main"]) == 2
    assert result["metrics"]["num_skipped"] == 0 and len(result["metrics"]["cmc"]) == 17
    assert sorted(os.listdir(out)) == ["curves.png", "last.pt", "result.json"]
    assert torch.load(os.path.join(out, "last.pt"), weights_only=False)["epoch"] == 1

    # --resume on every rank: one more epoch from the checkpoint
    _torchrun(_one_node(2), args + ["--epochs", "2", "--resume", "--no-eval"])
    resumed = json.load(open(os.path.join(out, "result.json")))
    assert len(resumed["history"]["main"]) == 2 and resumed["metrics"] is None
    assert torch.load(os.path.join(out, "last.pt"), weights_only=False)["epoch"] == 2

    # sharded evaluation (3 ranks: unequal shards of the 17-item gallery) == one process
    ckpt = ["--checkpoint", os.path.join(out, "last.pt"), "--workers", "0", "--device", "cpu", "--batch-size", "1"]
    _torchrun(_one_node(3), ["-m", "python_models.evaluate", *ckpt, "--json", str(tmp_path / "m.json")])
    sharded = json.load(open(tmp_path / "m.json"))
    single = _evaluate_one_thread(ckpt)
    assert len(single["cmc"]) == 17
    _same_metrics(sharded, single)


def test_torchrun_two_nodes_through_a_rendezvous(market_root, tmp_path):
    out = str(tmp_path / "run")
    train.main(["--dataset", "market1501", "--root", market_root, "--output", out, *TINY, "--epochs", "1",
                "--no-eval"])
    port = str(free_port())
    module = ["-m", "python_models.evaluate", "--checkpoint", os.path.join(out, "last.pt"), "--workers", "0",
              "--device", "cpu", "--batch-size", "1", "--json", str(tmp_path / "m.json")]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                               "1", "--node_rank", str(i), "--rdzv_backend", "c10d", "--rdzv_endpoint",
                               f"127.0.0.1:{port}", "--rdzv_id", "fgreid-test", *module],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=240) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(nodes, outputs):
        assert p.returncode == 0, stdout + stderr
    assert sum("market1501: mAP=" in stdout for stdout, _ in outputs) == 1  # printed by global rank 0 only
    sharded = json.load(open(tmp_path / "m.json"))
    _same_metrics(sharded, _evaluate_one_thread(module[2:-2]))
