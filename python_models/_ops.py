"""The one place where python_models reaches the fgreid_ops ops: every model, loss and evaluator
imports them from here. (While the ops were being written, plain-PyTorch stand-ins from SPEC.md
sat here; all ops have landed and none is left.)"""

import fgreid_ops

off = fgreid_ops.off
mask_upsample_mul = fgreid_ops.mask_upsample_mul
topk_mask = fgreid_ops.topk_mask
batch_hard_triplet = fgreid_ops.batch_hard_triplet
# against the batches of every rank under torch.distributed; the plain loss in one process
batch_hard_triplet_across_ranks = fgreid_ops.distributed.batch_hard_triplet
evaluate = fgreid_ops.evaluate
evaluate_features = fgreid_ops.evaluate_features
tracklet_features = fgreid_ops.tracklet_features
gem = fgreid_ops.gem
GeM = fgreid_ops.nn.GeM

__all__ = ["off", "mask_upsample_mul", "topk_mask", "batch_hard_triplet", "batch_hard_triplet_across_ranks",
           "evaluate", "evaluate_features",
           "tracklet_features", "gem", "GeM"]
