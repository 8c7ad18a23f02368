"""The Triton backend of klgrad.logits_divergence (backend="triton", and "auto" on CUDA
tensors): the host side of the row kernels in klgrad._triton_kernels. Triton is imported
only when this backend runs; on CPU tensors it runs under Triton's interpreter
(TRITON_INTERPRET=1 set before triton is imported), which is how the tests run it.

The arguments are checked by the C++ binding first (klgrad.logits_divergence calls it on an
empty CPU slice of the same dtype and row shape), so both backends refuse the same calls
with the same words. Nothing V-sized is allocated besides the gradient the caller asks
for (none with grad_in_place=True); the top-k forms take their threshold from torch.topk
(an N x k buffer, the size of the indices they return anyway) and resolve ties in the
kernel (docs/logits.md, "The GPU path").
"""
import functools

import torch

import klgrad

__all__ = ["kernels", "check_runnable", "divergence_rows"]

_COMPUTES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def kernels():
    """klgrad._triton_kernels, imported on first use (it imports triton)."""
    try:
        from . import _triton_kernels
    except ImportError as e:
        raise RuntimeError("klgrad computes CUDA tensors (and backend='triton') with Triton, "
                           "which is not installed: pip install triton, or pass CPU tensors "
                           "with backend='kernel'") from e
    return _triton_kernels


def _interpreted(k):
    return type(k.logits_rows).__name__ == "InterpretedFunction"


def check_runnable(logits):
    """Raises unless the Triton kernels can run on logits' device: a CUDA device, or the CPU
    under Triton's interpreter."""
    if logits.device.type == "cpu" and not _interpreted(kernels()):
        raise RuntimeError("backend='triton' on CPU tensors runs only under Triton's "
                           "interpreter: set TRITON_INTERPRET=1 in the environment before "
                           "triton is imported (else use backend='kernel' on the CPU)")
    if logits.dtype not in _COMPUTES:
        raise TypeError(f"logits= has dtype {str(logits.dtype).replace('torch.', '')}; the "
                        f"Triton kernels read float32, bfloat16 or float16 logits (float64 "
                        f"runs on the C++ kernel: backend='kernel' on CPU tensors)")


def _rows(x, name):
    """x as N x V rows over the same memory (each row contiguous, rows evenly spaced)."""
    try:
        rows = x.view(-1, x.shape[-1])
    except RuntimeError:
        rows = None
    if rows is None or (rows.shape[1] > 1 and rows.stride(1) != 1):
        raise ValueError(f"{name}= has shape {tuple(x.shape)} and strides that klgrad cannot "
                         f"read in place (each row of V logits contiguous, rows evenly "
                         f"spaced); pass a contiguous tensor (tensor.contiguous())")
    return rows


def _same_device(x, logits, name):
    if x is not None and x.device != logits.device:
        raise ValueError(f"{name}= is on {x.device} but logits= is on {logits.device}")


def _top_k_threshold(chooser, k):
    """Per row the chooser's k-th largest logit (float32) and how many entries equal to it
    belong to K (the first ones by index): K is then exactly the C++ kernel's."""
    top = torch.topk(chooser, k, dim=1).values
    thr = top[:, -1]
    take = k - (top > thr[:, None]).sum(dim=1)
    return thr.float().contiguous(), take.to(torch.int32).contiguous()


def _sorted_indices(idx, chooser):
    """K (written in index order) in descending order of the chooser's logits, ties to the
    smaller index; masked rows stay -1."""
    values = chooser.gather(1, idx.clamp(min=0)).float()
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)


def _place(r, positions, batches, masked):
    """' (sequence b, position t)' where the C++ kernel says it: for a masked batch or one of
    several sequences (positions: T of B x T x V logits, else N; batches: B)."""
    if not masked and batches <= 1:
        return ""
    return f" (sequence {r // positions}, position {r % positions})"


def _raise_for_row(k, status, r, rows, place):
    """The C++ kernel's error for row r (rows: the logits' and ref_logits' N x V views)."""
    if status == k.INFINITE_RKL.value:
        raise klgrad.InputError(f"ref_logits row {r}{place} gives zero probability (a -inf "
                                f"logit) to an entry where pi is positive: RKL = +inf and "
                                f"its gradient is undefined")
    name, row = ("logits", rows[0][r]) if status == k.BAD_Z.value else ("ref_logits",
                                                                         rows[1][r])
    bad = torch.nonzero(torch.isnan(row) | torch.isposinf(row))
    if len(bad):
        col = int(bad[0, 0])
        raise klgrad.NonFiniteError(f"{name} row {r}{place}, column {col} is "
                                    f"{float(row[col])}; logits must be finite or -inf")
    raise klgrad.InputError(f"{name} row {r}{place} has no finite entry (every logit is "
                            f"-inf), so its softmax is undefined; mask the row out")


def _counts(valid, n_rows, positions):
    """(valid rows, non-empty sequences) as 0-dim int64 tensors on valid's device."""
    rows = valid.sum()
    if positions:
        return rows, valid.view(-1, positions).any(dim=1).sum()
    return rows, (rows > 0).to(torch.int64)


def divergence_rows(logits, ref_logits, *, divergence, lam, top_k, temperature, mask, grad):
    """Runs the Triton kernels: returns (value, indices, loss, rows, sequences), value per
    row (logits' leading shape, float32), indices N x k (top-k forms) or None, the others
    0-dim tensors on the logits' device (loss: the mean of value over valid rows, float64).
    grad: a tensor of the logits' shape (the logits themselves for an in-place gradient)
    written with the gradient of the loss, or None. The arguments are already checked by
    the binding; check_runnable(logits) too."""
    k = kernels()
    _same_device(ref_logits, logits, "ref_logits")
    _same_device(mask, logits, "mask")
    _same_device(grad, logits, "grad")
    z, zr = _rows(logits, "logits"), _rows(ref_logits, "ref_logits")
    g = _rows(grad, "grad") if grad is not None else z
    n, v = z.shape
    positions = logits.shape[1] if logits.dim() == 3 else 0
    device = logits.device
    m = None if mask is None else (mask.reshape(n) != 0).to(torch.uint8)
    valid = torch.ones(n, dtype=torch.bool, device=device) if m is None else m != 0
    rows, sequences = _counts(valid, n, positions)
    scale = (1.0 / rows.clamp(min=1).to(torch.float32)).reshape(1)
    value = torch.empty(n, dtype=torch.float32, device=device)
    status = torch.empty(n, dtype=torch.int32, device=device)
    form = k.FORMS[divergence]
    kk = top_k if top_k is not None else 0
    idx = thr = take = None
    if kk:
        chooser = z if divergence.startswith("reverse") else zr
        thr, take = _top_k_threshold(chooser, kk)
        idx = torch.empty((n, kk), dtype=torch.int64, device=device)
    if n > 0:
        block = min(2048, _next_power_of_2(v))
        k.logits_rows[(n,)](
            z, zr, g, value, status, value if m is None else m, scale,
            value if thr is None else thr, status if take is None else take,
            value if idx is None else idx, v, kk, z.stride(0), zr.stride(0), g.stride(0),
            1.0 / temperature, lam, FORM=form, HAS_MASK=m is not None,
            WRITE_GRAD=grad is not None, BLOCK=block)
        bad = torch.nonzero(status).flatten()
        if len(bad):
            r = int(bad[0])
            batches = logits.shape[0] if positions else 1
            _raise_for_row(k, int(status[r]), r, (z, zr),
                           _place(r, positions or n, batches, m is not None))
    if idx is not None:
        idx = _sorted_indices(idx, chooser)
    loss = value.double().sum() / rows.clamp(min=1)
    return value.view(logits.shape[:-1]), idx, loss, rows, sequences


def _next_power_of_2(n):
    """The smallest power of 2 >= n."""
    return 1 << max(0, int(n) - 1).bit_length()
