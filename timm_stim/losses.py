"""Losses of Stimulative Training: the subnetwork KL term and KL- logit normalization."""
import torch
import torch.nn.functional as F

__all__ = ['logit_norm', 'stim_kl']


def logit_norm(logits: torch.Tensor, amplitude: float = 1.0, eps: float = 1e-7) -> torch.Tensor:
    """KL- normalization: layer norm over the class dimension (no affine) times ``amplitude``.

    Keeps only the direction of the logit vector (invariant to a positive scale and a shift),
    so argmax, and accuracy, are unchanged.

    Args:
        logits: (B, C) logits.
        amplitude: scale of the normalized logits.
        eps: layer-norm epsilon (1e-7 as in the official code).

    Returns:
        Normalized logits, same shape.
    """
    return F.layer_norm(logits, logits.shape[-1:], eps=eps) * amplitude


def stim_kl(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        temperature: float = 1.0,
        normalize: bool = False,
        amplitude: float = 1.0,
) -> torch.Tensor:
    """KL term pulling a subnetwork toward the full network (step 5d of the method).

    ``T^2 * KL(softmax(t / T) || softmax(u / T))`` with batch-mean reduction, where ``t`` and
    ``u`` are the teacher and student logits, both KL- normalized when ``normalize``. Computed
    in at least float32 (float16 / bfloat16 logits are upcast, so it is stable under autocast;
    float64 logits stay float64).

    The teacher is NOT detached here: pass ``teacher_logits.detach()`` to keep gradients out
    of the teacher, as Stimulative Training does (``StimulativeTask`` does so).

    Args:
        student_logits: (B, C) subnetwork logits.
        teacher_logits: (B, C) full-network logits.
        temperature: softmax temperature T (> 0).
        normalize: apply ``logit_norm`` to both sides (the ST++ KL- loss).
        amplitude: ``logit_norm`` amplitude when ``normalize``.

    Returns:
        Scalar loss.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f'stim_kl: student logits {tuple(student_logits.shape)} and teacher logits '
                         f'{tuple(teacher_logits.shape)} must have the same shape.')
    if temperature <= 0:
        raise ValueError(f'stim_kl: temperature must be > 0, got {temperature}.')
    # At least float32 (stable under autocast); float64 inputs stay float64.
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    student = student_logits.to(dtype)
    teacher = teacher_logits.to(dtype)
    if normalize:
        student = logit_norm(student, amplitude)
        teacher = logit_norm(teacher, amplitude)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    p_teacher = F.softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_p_student, p_teacher, reduction='batchmean') * (temperature * temperature)
