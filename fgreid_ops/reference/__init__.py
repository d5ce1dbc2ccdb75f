"""Plain-PyTorch references, written from ../shared/SPEC.md; every kernel is tested against them."""

from .batch_hard_triplet import batch_hard_triplet_reference
from .evaluate import distance_reference, evaluate_reference, per_query_reference
from .gem import gem_reference
from .mask_upsample_mul import mask_upsample_mul_reference
from .off import off_reference
from .rerank import rerank_reference
from .topk_mask import topk_mask_reference

__all__ = ["batch_hard_triplet_reference", "distance_reference", "evaluate_reference", "per_query_reference", "gem_reference", "mask_upsample_mul_reference", "off_reference", "rerank_reference", "topk_mask_reference"]
