"""One optimizer step, `train_step`, and the seam for timing its phases.

The step in the order of nanoGPT's and airbench's: for each micro-batch, forward under
autocast, loss, scaled backward (divided by the accumulation count, so `grad_accum`
micro-batches of n images give the gradient of one batch of `grad_accum * n`); then unscale
and clip, optimizer step, scaler update, zero the gradients, advance the schedule, Lookahead
and the EMA. Everything it changes is in the `RunState`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterable

import torch
import torch.nn as nn

from visionzoo.training.state import RunState

__all__ = ["train_step", "PhaseTimer", "NO_TIMING", "LossFn"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> mean loss


class PhaseTimer:
    """Where a run's time goes: the loop and `train_step` wrap each phase in `phase(name)`:
    "data" (waiting for the next micro-batch), "forward_backward", "optimizer" (clip, step,
    schedule, Lookahead, EMA) and "validation". This one measures nothing and costs nothing; a
    timer that measures subclasses it (on a GPU, synchronising before it reads the clock, or
    kernels still queued are counted in the next phase)."""

    def phase(self, name: str) -> ContextManager:
        return contextlib.nullcontext()


NO_TIMING = PhaseTimer()


def train_step(state: RunState, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor] | None], loss_fn: LossFn, *,
               grad_accum: int, micro_steps: int | None = None, clip_grad: float | None = None,
               autocast_dtype: torch.dtype | None = None, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
               ddp: nn.parallel.DistributedDataParallel | None = None, loss_sum: torch.Tensor | None = None,
               phases: PhaseTimer = NO_TIMING) -> int:
    """One optimizer step over `micro_batches`; returns the number of images it trained on.

    Args:
        state: the run's state; its model, optimizer, scheduler, scaler, Lookahead, EMA and
            `global_step` move on by one step.
        micro_batches: `(images, targets)` on the device, or None for a micro-batch whose images
            were all unreadable (it counts, but adds no gradient). Read lazily, one at a time, so
            loading interleaves with compute as in a plain loop.
        loss_fn: `(logits, targets) -> mean loss` (`losses.build_loss`).
        grad_accum: the accumulation count each loss is divided by. `micro_steps`: how many
            micro-batches this step has (default `grad_accum`; fewer at an epoch's end).
        forward: what to call on the images (the DDP or compiled wrapper); default `state.model`.
        ddp: the DistributedDataParallel wrapper under torchrun: gradients are all-reduced on the
            step's last backward only.
        loss_sum: a device scalar that each micro-batch's summed loss is added to (reading it
            back is a host-device sync, so the caller does that only now and then).
        phases: where to time "forward_backward" and "optimizer" (`PhaseTimer`).
    """
    model, scaler, optimizer = state.model, state.scaler, state.optimizer
    forward = forward or model
    micro_steps = grad_accum if micro_steps is None else micro_steps
    device_type = next(model.parameters()).device.type
    images_seen, step_loss = 0, None
    for index, batch in enumerate(micro_batches):
        if batch is None:
            continue
        images, targets = batch
        sync = ddp is None or index == micro_steps - 1
        with phases.phase("forward_backward"), (contextlib.nullcontext() if sync else ddp.no_sync()):
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = forward(images)
            loss = loss_fn(logits, targets)
            scaler.scale(loss / grad_accum).backward()
        if loss_sum is not None:
            summed = loss.detach().float() * len(images)
            step_loss = summed if step_loss is None else step_loss + summed
        images_seen += len(images)
    with phases.phase("optimizer"):
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.scheduler.step()
        state.global_step += 1
        if state.lookahead is not None:
            state.lookahead.step(state.global_step)
        if state.ema is not None:
            state.ema.update(model)
    if step_loss is not None:  # added once the step is done: an interrupted step leaves the sum as it was
        loss_sum += step_loss
    return images_seen
