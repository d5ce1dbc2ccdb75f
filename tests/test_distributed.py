"""fgreid_ops.distributed on 2 and 3 gloo ranks (CPU): the sharded evaluate_features equals the
one-process evaluate_features exactly (ties across shard boundaries, shards of unequal and zero
size, several chunks per shard, junk pid, the reference backend), SyncBatchNorm equals BatchNorm
over the concatenated batch, and arguments that disagree between ranks (or are bad on one rank)
raise the same error on every rank, after which the ranks still work together.

Features are small integers (float16/32/64), so every distance is exact whatever the GEMM's
blocking or summation order: equality is the expected result, not a matter of rounding luck."""

import json
import os

import pytest
import torch

import fgreid_ops
from fgreid_ops import distributed

from distributed_helpers import needs_gloo, run_ranks

pytestmark = needs_gloo


def _case(seed, Q, sizes, D, dtype):
    """Integer features with many exact duplicates; at every shard boundary a match of query 0
    and a non-match with the same features sit on either side."""
    g = torch.Generator().manual_seed(seed)
    G = sum(sizes)
    q = torch.randint(0, 3, (Q, D), generator=g).to(dtype)
    gal = torch.randint(0, 3, (G, D), generator=g).to(dtype)
    q_pids = torch.randint(0, 5, (Q,), generator=g)  # pid 4 has no gallery item: skipped queries
    g_pids = torch.randint(-1, 4, (G,), generator=g)  # -1: junk when junk_pid=-1
    q_cams = torch.randint(0, 2, (Q,), generator=g)
    g_cams = torch.randint(0, 3, (G,), generator=g)
    q_pids[0], q_cams[0] = 1, 0
    boundaries = torch.tensor(sizes).cumsum(0)[:-1].tolist()
    for b in boundaries:
        if 0 < b < G:
            gal[b] = gal[b - 1] = q[0]
            g_pids[b - 1], g_pids[b] = (1, 2) if b % 2 else (2, 1)
            g_cams[b - 1] = g_cams[b] = 1
    return q, gal, (q_pids, g_pids, q_cams, g_cams)


CASES = {
    2: [(0, 9, [7, 13], 3, torch.float32, None, 256 * 2**20, None),
        (1, 6, [20, 0], 4, torch.float64, -1, 256 * 2**20, None),
        (2, 7, [0, 17], 3, torch.float16, None, 256 * 2**20, None),
        (3, 8, [11, 12], 3, torch.float32, -1, 100, None),  # a few columns per chunk
        (4, 5, [6, 9], 3, torch.float32, None, 256 * 2**20, "reference")],
    3: [(5, 9, [5, 0, 15], 3, torch.float32, None, 256 * 2**20, None),
        (6, 7, [1, 1, 18], 2, torch.float64, -1, 100, None),
        (7, 6, [8, 8, 0], 3, torch.float32, -1, 256 * 2**20, None)],
}


def _assert_same(got, want):
    for field in ("cmc", "mAP", "mINP", "num_skipped", "ap"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, f=field: f"{f}: {m}")


def _sharded_equals_one_process(rank, world):
    for seed, Q, sizes, D, dtype, junk_pid, budget, backend in CASES[world]:
        q, gal, (q_pids, g_pids, q_cams, g_cams) = _case(seed, Q, sizes, D, dtype)
        max_rank = sum(sizes) + 2
        want = fgreid_ops.evaluate_features(q, gal, q_pids, g_pids, q_cams, g_cams, max_rank, junk_pid=junk_pid,
                                            return_per_query=True, backend=backend)
        assert int(want.num_skipped) < Q and 0 < float(want.mAP) < 1, (seed, want)
        lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
        got = distributed.evaluate_features(q, gal[lo:hi], q_pids, g_pids[lo:hi], q_cams, g_cams[lo:hi], max_rank,
                                            junk_pid=junk_pid, memory_budget=budget, return_per_query=True,
                                            backend=backend)
        _assert_same(got, want)
        # the same on the matrix: ties by global gallery index, as `evaluate` ranks them
        distmat = (q.double()[:, None] - gal.double()[None]).square().sum(-1)  # exact: small integers
        on_matrix = fgreid_ops.evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, junk_pid=junk_pid,
                                        return_per_query=True)
        _assert_same(got, on_matrix)


def _reranked_sharded_equals_one_process(rank, world):
    g = torch.Generator().manual_seed(11)
    sizes = [9, 0, 14][:world] if world == 3 else [9, 14]
    centres = torch.randn(6, 8, generator=g)
    pids = torch.randint(0, 6, (7 + sum(sizes),), generator=g)
    feats = centres[pids] + 0.7 * torch.randn(pids.shape[0], 8, generator=g)
    cams = torch.randint(0, 3, (pids.shape[0],), generator=g)
    q, gal, q_pids, g_pids, q_cams, g_cams = feats[:7], feats[7:], pids[:7], pids[7:], cams[:7], cams[7:]
    params = {"k1": 5, "k2": 3, "lambda_value": 0.3}
    want = fgreid_ops.evaluate_features(q, gal, q_pids, g_pids, q_cams, g_cams, 10, return_per_query=True,
                                        rerank=params)
    plain = fgreid_ops.evaluate_features(q, gal, q_pids, g_pids, q_cams, g_cams, 10, return_per_query=True)
    assert not torch.equal(want.ap, plain.ap)  # re-ranking changed the ranking: the case can fail
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    got = distributed.evaluate_features(q, gal[lo:hi], q_pids, g_pids[lo:hi], q_cams, g_cams[lo:hi], 10,
                                        return_per_query=True, rerank=params)
    _assert_same(got, want)


@pytest.mark.parametrize("world", [2, 3])
def test_reranked_sharded_evaluation_equals_one_process(world):
    run_ranks(_reranked_sharded_equals_one_process, world)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_evaluation_equals_one_process(world):
    run_ranks(_sharded_equals_one_process, world)


def test_tie_at_a_shard_boundary_is_in_the_cases():
    q, gal, (q_pids, g_pids, q_cams, g_cams) = _case(0, 9, [7, 13], 3, torch.float32)
    assert torch.equal(gal[6], gal[7]) and {int(g_pids[6]), int(g_pids[7])} == {1, 2}


def test_without_process_group_is_the_one_process_function():
    q, gal, ids = _case(0, 9, [7, 13], 3, torch.float32)
    _assert_same(distributed.evaluate_features(q, gal, *ids, return_per_query=True),
                 fgreid_ops.evaluate_features(q, gal, *ids, return_per_query=True))
    assert distributed.rank() == 0 and distributed.world_size() == 1


# --- SyncBatchNorm -----------------------------------------------------------------------------

def _sync_bn_equals_batch_norm(rank, world):
    g = torch.Generator().manual_seed(0)
    rows = [3, 5, 1][:world]
    x = torch.randn(sum(rows), 4, 3, 2, generator=g, dtype=torch.float64) * 3 + 1
    weights = torch.randn(x.shape, generator=g, dtype=x.dtype)
    plain = torch.nn.BatchNorm2d(4, momentum=0.3).double()
    with torch.no_grad():
        plain.weight.copy_(torch.randn(4, generator=g))
        plain.bias.copy_(torch.randn(4, generator=g))
    synced = distributed.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(4, momentum=0.3))).double()
    synced.load_state_dict({f"0.{k}": v for k, v in plain.state_dict().items()})
    assert type(synced[0]) is distributed.SyncBatchNorm
    lo, hi = sum(rows[:rank]), sum(rows[:rank + 1])
    for _ in range(2):
        x_all = x.clone().requires_grad_()
        y_all = plain(x_all)
        (y_all * weights).sum().backward()
        x_mine = x[lo:hi].clone().requires_grad_()
        y = synced(x_mine)
        (y * weights[lo:hi]).sum().backward()
        torch.testing.assert_close(y, y_all[lo:hi], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x_mine.grad, x_all.grad[lo:hi], rtol=1e-10, atol=1e-12)
        for name in ("weight", "bias"):
            grad = getattr(synced[0], name).grad.clone()
            torch.distributed.all_reduce(grad)  # what DDP's gradient sum does
            torch.testing.assert_close(grad, getattr(plain, name).grad, rtol=1e-10, atol=1e-12)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(synced[0], name), getattr(plain, name), rtol=1e-12, atol=1e-12)
        plain.zero_grad()
        synced.zero_grad()
    synced.eval()
    plain.eval()
    torch.testing.assert_close(synced(x[lo:hi]), plain(x[lo:hi]), rtol=1e-12, atol=1e-12)


def test_sync_batch_norm_equals_batch_norm_on_the_whole_batch():
    run_ranks(_sync_bn_equals_batch_norm, 2)


# --- mismatched arguments: the same error on every rank, never a hang ---------------------------

def _mismatches(rank, world, out_dir):
    other = rank == world - 1  # the odd rank out
    labels = torch.tensor([0, 0, 1, 1])
    q, gal, (q_pids, g_pids, q_cams, g_cams) = _case(0, 5, [4, 4], 3, torch.float32)
    g_mine = slice(4 * rank, 4 * rank + 4) if rank < 2 else slice(0, 0)
    calls = {
        "triplet D": lambda: distributed.batch_hard_triplet(torch.randn(4, 5 if other else 4), labels),
        "triplet dtype": lambda: distributed.batch_hard_triplet(
            torch.randn(4, 4, dtype=torch.float64 if other else torch.float32), labels),
        "triplet label dtype": lambda: distributed.batch_hard_triplet(torch.randn(4, 4), labels.to(
            torch.int32 if other else torch.int64)),
        "triplet margin": lambda: distributed.batch_hard_triplet(torch.randn(4, 4), labels, 0.5 if other else 0.3),
        "triplet requires_grad": lambda: distributed.batch_hard_triplet(
            torch.randn(4, 4, requires_grad=other), labels),
        "triplet bad labels on one rank": lambda: distributed.batch_hard_triplet(
            torch.randn(4, 4), labels[:3] if other else labels),
        "evaluate D": lambda: distributed.evaluate_features(
            q[:, :2] if other else q, gal[g_mine, :2] if other else gal[g_mine], q_pids, g_pids[g_mine], q_cams,
            g_cams[g_mine]),
        "evaluate gallery dtype": lambda: distributed.evaluate_features(
            q, gal[g_mine].double() if other else gal[g_mine], q_pids, g_pids[g_mine], q_cams, g_cams[g_mine]),
        "evaluate other queries": lambda: distributed.evaluate_features(
            q + (1 if other else 0), gal[g_mine], q_pids, g_pids[g_mine], q_cams, g_cams[g_mine]),
        "evaluate other query pids": lambda: distributed.evaluate_features(
            q, gal[g_mine], q_pids.roll(1) if other else q_pids, g_pids[g_mine], q_cams, g_cams[g_mine]),
        "evaluate bad g_pids on one rank": lambda: distributed.evaluate_features(
            q, gal[g_mine], q_pids, g_pids[g_mine][:1] if other else g_pids[g_mine], q_cams, g_cams[g_mine]),
        "evaluate max_rank": lambda: distributed.evaluate_features(
            q, gal[g_mine], q_pids, g_pids[g_mine], q_cams, g_cams[g_mine], 5 if other else 4),
        "evaluate rerank": lambda: distributed.evaluate_features(
            q, gal[g_mine], q_pids, g_pids[g_mine], q_cams, g_cams[g_mine], rerank={"k1": 4 if other else 6}),
        "evaluate bad rerank on one rank": lambda: distributed.evaluate_features(
            q, gal[g_mine], q_pids, g_pids[g_mine], q_cams, g_cams[g_mine], rerank={"k": 4} if other else True),
        "evaluate all shards empty": lambda: distributed.evaluate_features(
            q, gal[:0], q_pids, g_pids[:0], q_cams, g_cams[:0]),
        "gather rows dtype": lambda: distributed.all_gather_rows(torch.ones(2, 3, dtype=torch.int32 if other
                                                                             else torch.int64)),
        "sync bn dtype": lambda: distributed.convert_sync_batchnorm(torch.nn.BatchNorm1d(3)).to(
            torch.float64 if other else torch.float32)(torch.ones(4, 3, dtype=torch.float64 if other
                                                                   else torch.float32)),
        "different collectives": lambda: (distributed.all_gather_rows(torch.ones(2)) if other else
                                          distributed.batch_hard_triplet(torch.randn(4, 4), labels)),
    }
    messages = {}
    for name, call in calls.items():
        try:
            call()
            messages[name] = None
        except (TypeError, ValueError, RuntimeError) as e:
            messages[name] = f"{type(e).__name__}: {e}"
    # the ranks are still in step: a good call works on all of them
    emb = torch.randn(4, 4, generator=torch.Generator().manual_seed(rank))
    loss = distributed.batch_hard_triplet(emb.requires_grad_(), labels)
    loss.backward()
    messages["after"] = float(torch.isfinite(emb.grad).all())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(messages, f)


EXPECTED = {
    "triplet D": "expected emb.shape[1] (D) to be the same on every rank, got rank 0: 4, rank 1: 5",
    "triplet dtype": "expected emb.dtype to be the same on every rank, got rank 0: torch.float32, rank 1: torch.float64",
    "triplet label dtype": "expected labels.dtype to be the same on every rank",
    "triplet margin": "expected options to be the same on every rank",
    "triplet requires_grad": "expected emb.requires_grad to be the same on every rank",
    "triplet bad labels on one rank": "on rank 1: fgreid_ops.distributed.batch_hard_triplet: expected labels of shape",
    "evaluate D": "expected q_feats (dtype, shape, device) to be the same on every rank, got rank 0: float32 [5, 3] on cpu, rank 1: float32 [5, 2] on cpu",
    "evaluate gallery dtype": "expected g_feats.dtype to be the same on every rank",
    "evaluate other queries": "expected the queries (q_feats, q_pids, q_camids) to be the same on every rank",
    "evaluate other query pids": "expected the queries (q_feats, q_pids, q_camids) to be the same on every rank",
    "evaluate bad g_pids on one rank": "on rank 1: fgreid_ops.distributed.evaluate_features: expected g_pids",
    "evaluate max_rank": "expected max_rank to be the same on every rank",
    "evaluate rerank": "expected rerank to be the same on every rank, got rank 0: (6, 6, 0.3), rank 1: (4, 6, 0.3)",
    "evaluate bad rerank on one rank": "on rank 1: fgreid_ops.distributed.evaluate_features: expected rerank keys",
    "evaluate all shards empty": "expected at least one gallery item over all ranks",
    "gather rows dtype": "expected x.dtype to be the same on every rank",
    "sync bn dtype": "expected input.dtype to be the same on every rank",
    "different collectives": "expected every rank to call the same collective, got rank 0: batch_hard_triplet, "
                             "rank 1: all_gather_rows",
}


def test_mismatched_arguments_raise_the_same_error_on_every_rank(tmp_path):
    run_ranks(_mismatches, 2, str(tmp_path))
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert ranks[0] == ranks[1]
    for name, expected in EXPECTED.items():
        assert ranks[0][name] is not None and expected in ranks[0][name], (name, ranks[0][name])
    assert ranks[0]["after"] == 1.0
