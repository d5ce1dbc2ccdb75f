"""Public ops: one module per op, each with its function, fakes and autograd registration."""

from .batch_hard_triplet import batch_hard_triplet
from .evaluate import evaluate, evaluate_features, EvaluationResult
from .gem import gem
from .mask_upsample_mul import mask_upsample_mul
from .off import off
from .rerank import rerank
from .topk_mask import topk_mask

__all__ = ["batch_hard_triplet", "evaluate", "evaluate_features", "EvaluationResult", "gem", "mask_upsample_mul", "off", "rerank", "topk_mask"]
