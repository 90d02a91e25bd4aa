"""longlive.train: training objectives (spec 04). Stage 1 teacher forcing lives in `teacher_forcing`."""

from longlive.train.teacher_forcing import (
    FrameSchedule,
    MaskedAttention,
    add_noise,
    dense_mask,
    frame_schedule,
    loss_weight_table,
    predicted_x0,
    sample_t_index,
    sigma_table,
    snap_index,
    teacher_forcing_loss,
    tf_mask_mod,
    tf_rule,
)

__all__ = [
    "FrameSchedule",
    "MaskedAttention",
    "add_noise",
    "dense_mask",
    "frame_schedule",
    "loss_weight_table",
    "predicted_x0",
    "sample_t_index",
    "sigma_table",
    "snap_index",
    "teacher_forcing_loss",
    "tf_mask_mod",
    "tf_rule",
]
