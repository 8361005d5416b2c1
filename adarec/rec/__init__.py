"""Recommendation side of adarec: item and user encoders, TransRec, data, losses, metrics."""

from __future__ import annotations

from adarec.rec.batch_recommend import recommend_all
from adarec.rec.data import (
    PAD,
    EvalCollator,
    EvalDataset,
    EvalExample,
    InteractionData,
    LeaveOneOutSplit,
    TrainCollator,
    TrainDataset,
    TrainExample,
    leave_one_out,
    pad_left,
    pad_right,
    sample_negatives,
    tokenize_item_texts,
)
from adarec.rec.datasets import load_atomic, load_movielens_100k, load_movielens_latest_small
from adarec.rec.early_stopping import EarlyStopping
from adarec.rec.guards import all_scores_tied, refuse_collapsed
from adarec.rec.item_adaptors import IDFusion, WhiteningMoEAdaptor
from adarec.rec.item_encoder import ItemEncoder, ItemEncoderBase
from adarec.rec.item_encoders import (
    AudioItemEncoder,
    IDItemEncoder,
    ImageItemEncoder,
    InterModalSide,
    MultimodalItemEncoder,
    PrecomputedItemEncoder,
    TextItemEncoder,
)
from adarec.rec.kinds import PartSource, kinds, register_kind, unregister_kind
from adarec.rec.losses import (
    LOSSES,
    Candidates,
    bce_loss,
    full_softmax_loss,
    in_batch_candidates,
    sampled_softmax_loss,
)
from adarec.rec.metrics import (
    TIES,
    PopularityRecommender,
    evaluate_full_ranking,
    full_ranking_counts,
    full_ranking_ranks,
    ranking_metrics,
    target_ranks,
    tie_counts,
    topk_chunked,
)
from adarec.rec.objective import hold_out_items
from adarec.rec.param_groups import param_groups, parameter_roles
from adarec.rec.recipes import apply_method
from adarec.rec.select import (
    Recipe,
    Selection,
    default_candidates,
    load_recipe,
    save_recipe,
    select_recipe,
)
from adarec.rec.sharded import (
    build_item_table,
    build_state_cache,
    load_item_table,
    load_state_cache,
)
from adarec.rec.splits import ColdItemSplit, cold_item_split, select_users, subsample_users
from adarec.rec.state_cache import HiddenStateCache, state_cache_bytes
from adarec.rec.text_length import (
    TextLength,
    choose_text_length,
    identical_items,
    warn_identical,
)
from adarec.rec.training import (
    EpochEnd,
    FitResult,
    StepEnd,
    check_loss,
    epoch_order,
    evaluate_protocols,
    fit,
    load_loop_state,
    save_loop_state,
    train_epoch,
    train_step,
)
from adarec.rec.transfer import load_transferable, save_transferable
from adarec.rec.transrec import LOSS_NAMES, OBJECTIVES, POLICIES, Recommendations, TransRec
from adarec.rec.user_encoders import SASRec, SASRecBlock

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "OBJECTIVES",
    "PAD",
    "POLICIES",
    "TIES",
    "AudioItemEncoder",
    "Candidates",
    "ColdItemSplit",
    "EarlyStopping",
    "EpochEnd",
    "EvalCollator",
    "EvalDataset",
    "EvalExample",
    "FitResult",
    "HiddenStateCache",
    "IDFusion",
    "IDItemEncoder",
    "ImageItemEncoder",
    "InterModalSide",
    "InteractionData",
    "ItemEncoder",
    "ItemEncoderBase",
    "LeaveOneOutSplit",
    "MultimodalItemEncoder",
    "PartSource",
    "PopularityRecommender",
    "PrecomputedItemEncoder",
    "Recipe",
    "Recommendations",
    "SASRec",
    "SASRecBlock",
    "Selection",
    "StepEnd",
    "TextItemEncoder",
    "TextLength",
    "TrainCollator",
    "TrainDataset",
    "TrainExample",
    "TransRec",
    "WhiteningMoEAdaptor",
    "all_scores_tied",
    "apply_method",
    "bce_loss",
    "build_item_table",
    "build_state_cache",
    "check_loss",
    "choose_text_length",
    "cold_item_split",
    "default_candidates",
    "epoch_order",
    "evaluate_full_ranking",
    "evaluate_protocols",
    "fit",
    "full_ranking_counts",
    "full_ranking_ranks",
    "full_softmax_loss",
    "hold_out_items",
    "identical_items",
    "in_batch_candidates",
    "kinds",
    "leave_one_out",
    "load_atomic",
    "load_item_table",
    "load_loop_state",
    "load_movielens_100k",
    "load_movielens_latest_small",
    "load_recipe",
    "load_state_cache",
    "load_transferable",
    "pad_left",
    "pad_right",
    "param_groups",
    "parameter_roles",
    "ranking_metrics",
    "recommend_all",
    "refuse_collapsed",
    "register_kind",
    "sample_negatives",
    "sampled_softmax_loss",
    "save_loop_state",
    "save_recipe",
    "save_transferable",
    "select_recipe",
    "select_users",
    "state_cache_bytes",
    "subsample_users",
    "target_ranks",
    "tie_counts",
    "tokenize_item_texts",
    "topk_chunked",
    "train_epoch",
    "train_step",
    "unregister_kind",
    "warn_identical",
]
