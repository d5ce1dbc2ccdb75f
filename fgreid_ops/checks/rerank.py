"""Checks of the fgreid::rerank_* ops (csrc/cpu/rerank.cpp, same messages) and of the arguments of
rerank / evaluate_features(..., rerank=...)."""

import torch

from .. import _checks as checks
from .evaluate import check_features as check_evaluate_features

OP = "rerank"
PARAMS = ("k1", "k2", "lambda_value")
DEFAULTS = {"k1": 20, "k2": 6, "lambda_value": 0.3}


def _check_int(op, arg, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} >= {minimum}, got {value}")


def check_params(op, k1, k2, lambda_value):
    _check_int(op, "k1", k1, 1)
    _check_int(op, "k2", k2, 1)
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float)):
        raise TypeError(f"fgreid_ops.{op}: expected lambda_value to be a float, got {type(lambda_value).__name__}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"fgreid_ops.{op}: expected 0 <= lambda_value <= 1, got {lambda_value}")


def rerank_params(op, params):
    """(k1, k2, lambda_value) from evaluate_features' rerank= argument: a dict with any of
    k1, k2, lambda_value (the defaults of `rerank` for the others), or True for all defaults."""
    if params is True:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"fgreid_ops.{op}: expected rerank to be a dict with keys among {list(PARAMS)}, "
                        f"True or None, got {type(params).__name__}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"fgreid_ops.{op}: expected rerank keys among {list(PARAMS)}, got {unknown}")
    k1, k2, lambda_value = ({**DEFAULTS, **params}[name] for name in PARAMS)
    check_params(op, k1, k2, lambda_value)
    return k1, k2, lambda_value


def check_features(op, q_feats, g_feats):
    """The features checks of evaluate_features, and at most 2^31-1 rows together."""
    check_evaluate_features(op, q_feats, g_feats)
    if q_feats.shape[0] + g_feats.shape[0] > 2**31 - 1:
        raise ValueError(f"fgreid_ops.{op}: expected at most 2^31-1 rows in q_feats and g_feats together, "
                         f"got {q_feats.shape[0] + g_feats.shape[0]}")


def _check_float32(op, arg, t):
    checks.check_tensor(op, arg, t)
    if t.dtype != torch.float32:
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be float32, got {t.dtype}")


def _check_vector(op, arg, t, n, size_name, ref):
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} of shape [{size_name}]=[{n}], got {list(t.shape)}")
    checks.check_same_device(op, arg, t, "feats", ref)


def _check_rows(op, feats, sqnorms):
    _check_float32(op, "feats", feats)
    checks.check_dim(op, "feats", feats, 2, "(N, D)")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected feats to be non-empty, got shape {list(feats.shape)}")
    if feats.shape[0] > 2**31 - 1:
        raise ValueError(f"fgreid_ops.{op}: expected feats to have at most 2^31-1 rows, got {feats.shape[0]}")
    _check_float32(op, "sqnorms", sqnorms)
    _check_vector(op, "sqnorms", sqnorms, feats.shape[0], "N", feats)


def check_knn_inputs(feats, sqnorms, k, op="rerank_knn"):
    _check_rows(op, feats, sqnorms)
    N = feats.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"fgreid_ops.{op}: expected 1 <= k <= N ({N}), got {k}")


def check_neighbours_inputs(feats, sqnorms, knn_index, row_max, k1, k2):
    op = "rerank_neighbours"
    _check_rows(op, feats, sqnorms)
    _check_int(op, "k1", k1, 1)
    _check_int(op, "k2", k2, 1)
    N = feats.shape[0]
    need = max(min(k1 + 1, N), min(k2, N))
    checks.check_tensor(op, "knn_index", knn_index)
    if knn_index.dtype != torch.int64:
        raise TypeError(f"fgreid_ops.{op}: expected knn_index to be int64, got {knn_index.dtype}")
    if knn_index.dim() != 2 or knn_index.shape[0] != N or not need <= knn_index.shape[1] <= N:
        raise ValueError(f"fgreid_ops.{op}: expected knn_index of shape [N, K]=[{N}, K] with {need} <= K <= N, "
                         f"got {list(knn_index.shape)}")
    checks.check_same_device(op, "knn_index", knn_index, "feats", feats)
    _check_float32(op, "row_max", row_max)
    _check_vector(op, "row_max", row_max, N, "N", feats)


def check_blend_inputs(gram, row_sq, col_sq, row_max, v_offsets, v_columns, v_values, inv_offsets, inv_rows,
                       inv_values, row_start, col_start, lambda_value):
    """The shape, dtype and range checks of fgreid::rerank_blend_ (the C++ kernel also checks the
    CSR values it indexes with)."""
    op = "rerank_blend_"
    _check_float32(op, "gram", gram)
    checks.check_dim(op, "gram", gram, 2, "(rows, cols)")
    for arg, t in (("row_sq", row_sq), ("col_sq", col_sq), ("row_max", row_max), ("v_values", v_values),
                   ("inv_values", inv_values)):
        _check_float32(op, arg, t)
    for arg, t in (("v_offsets", v_offsets), ("v_columns", v_columns), ("inv_offsets", inv_offsets),
                   ("inv_rows", inv_rows)):
        checks.check_tensor(op, arg, t)
        if t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"fgreid_ops.{op}: expected {arg} to be a 1-D int64 tensor, got {t.dim()}-D {t.dtype}")
    R, C = gram.shape
    N = v_offsets.shape[0] - 1
    if N < 0 or inv_offsets.shape[0] != N + 1:
        raise ValueError(f"fgreid_ops.{op}: expected v_offsets and inv_offsets of shape [N + 1], "
                         f"got {list(v_offsets.shape)} and {list(inv_offsets.shape)}")
    for arg, t, n in (("row_sq", row_sq, R), ("col_sq", col_sq, C), ("row_max", row_max, R),
                      ("v_values", v_values, v_columns.shape[0]), ("inv_values", inv_values, inv_rows.shape[0])):
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"fgreid_ops.{op}: expected {arg} to be 1-D of size {n}, got {list(t.shape)}")
    if not (0 <= row_start and row_start + R <= N):
        raise ValueError(f"fgreid_ops.{op}: expected 0 <= row_start and row_start + rows <= N ({N}), "
                         f"got row_start={row_start}, rows={R}")
    if not (0 <= col_start and col_start + C <= N):
        raise ValueError(f"fgreid_ops.{op}: expected 0 <= col_start and col_start + cols <= N ({N}), "
                         f"got col_start={col_start}, cols={C}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"fgreid_ops.{op}: expected 0 <= lambda_value <= 1, got {lambda_value}")
