"""Zeroing megatron DDP's gradient buffers by overwriting instead of filling (CPU).

megatron's `DistributedDataParallel.zero_grad_buffer()` fills every gradient buffer with zeros at the start
of each step, and the backward then accumulates into them. On a CPU that fill is a pass over memory as
large as the model's gradients. Most of it is wasted: with gradient-accumulation fusion, every linear weight's first gradient of the step is a matmul that
can write its result (`beta = 0`) instead of adding it to zeros, and an embedding's gradient has only the
rows of the step's tokens.

The protocol, used only where every writer understands it (`lazy_zeroing_supported`):

- `zero_grad_buffer(ddp)` zeros the gradients of parameters that are not known to be overwritten, and marks
  the others *stale* instead (`main_grad` keeps last step's values, to be ignored).
- Writers that accumulate straight into `main_grad` (`parallel.cpu_adapter.CpuWgradAccumulation`, the
  model's fused embedding and output-layer backward in `models/common/main_grad.py`) call
  `prepare_write(main_grad, rows)` first. A dense writer (`rows=None`) gets True on the step's first write
  into a stale buffer: it overwrites the buffer (a `beta = 0` matmul). For a writer of some rows only (the
  embedding's scatter-add) a stale buffer is zeroed there: only the rows written last step when those are
  known, else all of it.
- `settle_grad_buffers(ddp)`, after the last backward of the step and before any gradient is reduced or
  read, zeros whatever is still stale (a parameter that got no gradient this step) and records which
  parameters were written only through those writers (megatron's `grad_added_to_main_grad`): only these
  are marked stale at the next step. So a parameter whose gradient came through autograd and DDP's hook
  (which adds into the buffer) is always zero-filled first, and the very first step fills everything.
  It also records the rows written when only row writers wrote and nothing will add other rows before the
  next step (one data-parallel rank and one pipeline stage: no all-reduce brings in other ranks' rows;
  clipping and AdamW's rescaling keep zero rows zero).

The result is the same gradient as fill-then-add, bit for bit (a `beta = 0` matmul computes exactly what
adding to zeros gives); `tests/test_grad_buffers.py` checks it against megatron's own zeroing over several
steps and micro-batches. With DDP's overlapped gradient reduction (buckets reduced during the backward) or
on CUDA (where the fill is cheap and the real fusion kernel knows nothing of this) megatron's zeroing is used.
"""

from __future__ import annotations

import torch

_STALE = "_cosmos_nemo_stale"  # on a main_grad: its values are last step's, to be overwritten
_OVERWRITTEN = "_cosmos_nemo_overwritten"  # on a parameter: last step wrote it only through these writers
_WRITTEN = "_cosmos_nemo_written_rows"  # on a main_grad: row tensors written this step; None: a dense write
_DIRTY = "_cosmos_nemo_dirty_rows"  # on a main_grad: the only rows that may be nonzero; None: unknown


def prepare_write(main_grad: torch.Tensor, rows: torch.Tensor | None = None) -> bool:
    """Call before a backward writes into `main_grad`; `rows` (indices along dim 0) when the write touches
    only those rows (a scatter-add), None for a dense write.

    Returns True when the (dense) writer must overwrite the buffer instead of adding to it: the step's first
    write into a stale buffer. For a row writer a stale buffer is zeroed here (only last step's rows when
    they are known) and False is returned: add as usual."""
    stale = getattr(main_grad, _STALE, False)
    written = [] if stale else getattr(main_grad, _WRITTEN, None)
    if rows is None or written is None:
        written = None
    else:
        written.append(rows)
    setattr(main_grad, _WRITTEN, written)
    if not stale:
        return False
    setattr(main_grad, _STALE, False)
    if rows is None:
        return True
    dirty = getattr(main_grad, _DIRTY, None)
    if dirty is None:
        main_grad.zero_()
    else:
        main_grad.index_fill_(0, dirty, 0)
    # From here the nonzero rows are this step's, known only once the step settles: a step that fails
    # before that leaves "unknown", and the next one zeroes the whole buffer.
    setattr(main_grad, _DIRTY, None)
    return False


def lazy_zeroing_supported(ddp) -> bool:
    """Whether `zero_grad_buffer(ddp)` may skip the fill: the CPU adapter's `lazy_grad_zeroing` acceleration
    is on (its fusion kernel understands stale buffers) and gradients are not reduced during the backward."""
    from cosmos_nemo.parallel import cpu_adapter

    return cpu_adapter.acceleration("lazy_grad_zeroing") and not ddp.ddp_config.overlap_grad_reduce and \
        not getattr(ddp, "expert_parallel_buffers", None)


def _rows_stay_local() -> bool:
    """No gradient all-reduce adds other ranks' rows into this rank's buffers (one DP rank, one stage)."""
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_world_size() == 1 and \
        parallel_state.get_pipeline_model_parallel_world_size() == 1


def zero_grad_buffer(ddp) -> None:
    """megatron's `ddp.zero_grad_buffer()`, filling only the gradients that will not be overwritten."""
    if not lazy_zeroing_supported(ddp):
        ddp.zero_grad_buffer()
        return
    for param in ddp.params_with_grad:
        param.grad_added_to_main_grad = False
        main = param.main_grad
        if getattr(param, _OVERWRITTEN, False):
            setattr(main, _STALE, True)
        else:
            main.zero_()
            setattr(main, _STALE, False)
        setattr(main, _WRITTEN, [])
    # Buffer padding is never written by anyone (every writer goes through a parameter's view), so it
    # stays zero from DDP's allocation on.
    for bucket_group in ddp.bucket_groups:
        bucket_group.reset()


def settle_grad_buffers(ddp) -> None:
    """After the step's backward: zero what was marked stale and not written; remember which parameters
    were written only by these writers, and which rows (see the module docstring)."""
    if not lazy_zeroing_supported(ddp):
        return
    local = _rows_stay_local()
    for param in ddp.params_with_grad:
        main = param.main_grad
        overwritten = bool(getattr(param, "grad_added_to_main_grad", False))
        if getattr(main, _STALE, False):  # not written this step
            setattr(main, _STALE, False)
            main.zero_()
            overwritten = False
        setattr(param, _OVERWRITTEN, overwritten)
        written = getattr(main, _WRITTEN, None)
        setattr(main, _DIRTY, torch.cat(written) if overwritten and local and written else None)
        setattr(main, _WRITTEN, None)


def finalize_with_settle(finalize):
    """Wrap megatron's `finalize_model_grads(model_chunks, ...)` so that the buffers are settled first."""

    def finalize_model_grads(model, *args, **kwargs):
        for chunk in model:
            settle_grad_buffers(chunk)
        return finalize(model, *args, **kwargs)

    finalize_model_grads.__wrapped__ = finalize
    return finalize_model_grads
