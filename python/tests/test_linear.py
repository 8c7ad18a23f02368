"""klgrad.torch.linear_logits_loss (the fused linear form, klgrad.linear): its loss, values
and gradients to hidden, weight and bias against autograd of the unfused composite (the
logits made whole by torch, hidden @ weight.T + bias, then klgrad.torch.logits_loss, whose
gradient is the C++ kernel's), in float64 for every divergence and top-k form, with a mask,
temperature, bias and a teacher given as logits or as a (hidden, weight[, bias]) head, with
chunk_rows that does not divide N; masked rows holding NaN; the op under
torch.library.opcheck; bad arguments; and the peak memory the fused form allocates,
measured with torch.profiler, against one chunk's logits."""
import pytest

torch = pytest.importorskip("torch")

import klgrad.torch as kt  # noqa: E402
from klgrad import linear  # noqa: E402
from memory import peak_allocated  # noqa: E402

ROWS, FEATURES, VOCAB = 13, 6, 37
TOP_K = 5
TOLERANCE = dict(rtol=1e-10, atol=1e-13)  # float64: the two paths differ in sum order only

DIVERGENCES = [
    ("reverse-kl", None), ("forward-kl", None), ("jensen-shannon", None),
    ("forward-kl-top-k", TOP_K), ("reverse-kl-top-k", TOP_K),
    ("forward-kl-top-k-tail", TOP_K), ("reverse-kl-top-k-tail", TOP_K),
]


def head(seed, rows=ROWS, features=FEATURES, vocab=VOCAB, dtype=torch.float64, bias=True):
    """(hidden, weight, bias): hidden rows x features, weight vocab x features, bias vocab,
    leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, features, generator=g, dtype=dtype)
    w = torch.randn(vocab, features, generator=g, dtype=dtype) * 0.7
    b = torch.randn(vocab, generator=g, dtype=dtype) if bias else None
    return tuple(None if x is None else x.requires_grad_(True) for x in (h, w, b))


def row_mask(rows=ROWS, seed=9):
    m = torch.rand(rows, generator=torch.Generator().manual_seed(seed)) < 0.7
    m[0], m[-1] = True, False
    return m


def unfused(h, w, b, ref, **kw):
    """The composite: whole logits, then logits_loss (the kernel's gradient), autograd for the
    linear layers. Returns (loss, value, [grads of h, w, b])."""
    logits = h @ w.T + (0 if b is None else b)
    if isinstance(ref, tuple):
        rh, rw, rb = (ref + (None,))[:3]
        ref = rh @ rw.T + (0 if rb is None else rb)
    loss, value = kt.logits_loss(logits, ref.detach(), **kw)
    params = [x for x in (h, w, b) if x is not None]
    return loss, value, torch.autograd.grad(loss, params)


def fused(h, w, b, ref, **kw):
    loss, value = kt.linear_logits_loss(h, w, ref, bias=b, **kw)
    params = [x for x in (h, w, b) if x is not None]
    return loss, value, torch.autograd.grad(loss, params)


def assert_same(fused_out, unfused_out):
    (lf, vf, gf), (lu, vu, gu) = fused_out, unfused_out
    torch.testing.assert_close(lf, lu, **TOLERANCE)
    torch.testing.assert_close(vf, vu, **TOLERANCE)
    for a, e in zip(gf, gu):
        assert e.abs().max() > 0
        torch.testing.assert_close(a, e, **TOLERANCE)


def teacher(form):
    """The teacher in each of ref='s forms: its logits, a (hidden, weight) head, or a
    (hidden, weight, bias) head."""
    rh, rw, rb = (x.detach() for x in head(seed=2))
    if form == "logits":
        return rh @ rw.T + rb
    return (rh, rw) if form == "pair" else (rh, rw, rb)


@pytest.mark.parametrize("divergence,top_k", DIVERGENCES)
@pytest.mark.parametrize("form", ["logits", "pair", "triple"])
def test_gradients_equal_the_unfused_composite(divergence, top_k, form):
    h, w, b = head(seed=1)
    kw = dict(divergence=divergence, top_k=top_k, temperature=0.7, lam=0.3, mask=row_mask())
    ref = teacher(form)
    assert_same(fused(h, w, b, ref, chunk_rows=4, **kw), unfused(h, w, b, ref, **kw))


@pytest.mark.parametrize("chunk_rows", [1, 5, ROWS, 100, None])
def test_every_chunking_gives_the_same_result(chunk_rows):
    h, w, _ = head(seed=3, bias=False)
    kw = dict(divergence="jensen-shannon", lam=0.8, temperature=2.0)
    ref = teacher("pair")
    assert_same(fused(h, w, None, ref, chunk_rows=chunk_rows, **kw),
                unfused(h, w, None, ref, **kw))


def test_padded_batch_with_a_batch_by_time_mask():
    h, w, b = head(seed=4, rows=12)
    rh, rw = (x.detach() for x in head(seed=5, rows=12, bias=False)[:2])
    mask = row_mask(rows=12).reshape(3, 4)
    kw = dict(divergence="forward-kl-top-k-tail", top_k=3, mask=mask)
    out = fused(h.reshape(3, 4, FEATURES), w, b, (rh.reshape(3, 4, FEATURES), rw),
                chunk_rows=5, **kw)
    expected = unfused(h.reshape(3, 4, FEATURES), w, b, (rh.reshape(3, 4, FEATURES), rw), **kw)
    assert out[1].shape == (3, 4) and out[2][0].shape == (3, 4, FEATURES)
    assert_same(out, expected)


def test_masked_rows_are_never_read():
    """NaN in the masked rows of the student's and the teacher's hidden states changes
    nothing: the same loss, values and gradients as zeros there."""
    h, w, b = head(seed=6)
    rh, rw = teacher("pair")
    mask = row_mask()
    clean = fused(h, w, b, (rh, rw), mask=mask, chunk_rows=4)
    poisoned_h = h.detach().clone()
    poisoned_h[~mask] = float("nan")
    poisoned_rh = rh.clone()
    poisoned_rh[~mask] = float("nan")
    hp = poisoned_h.requires_grad_(True)
    out = fused(hp, w, b, (poisoned_rh, rw), mask=mask, chunk_rows=4)
    assert_same(out, clean)
    assert torch.equal(out[2][0][~mask], torch.zeros_like(out[2][0][~mask]))


def test_no_valid_row_gives_zero_loss_and_gradients():
    h, w, b = head(seed=7)
    loss, value, grads = fused(h, w, b, teacher("logits"), mask=torch.zeros(ROWS, dtype=bool),
                               chunk_rows=4)
    assert loss.item() == 0 and not value.any() and not any(g.any() for g in grads)


def test_float32_matches_the_float32_composite():
    """float32 inputs: chunk logits in float32, the composite's too; the paths differ in the
    rounding of the matmuls' sums (blocking), so the bound is float32's, not exact."""
    h, w, b = (x.detach().float().requires_grad_(True) for x in head(seed=8))
    ref = teacher("logits").float()
    kw = dict(divergence="reverse-kl", temperature=0.7)
    (lf, vf, gf), (lu, vu, gu) = fused(h, w, b, ref, chunk_rows=3, **kw), unfused(h, w, b, ref,
                                                                                   **kw)
    assert lf.dtype == torch.float32
    torch.testing.assert_close(vf, vu, rtol=1e-5, atol=1e-6)
    for a, e in zip(gf, gu):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def test_bfloat16_head_gets_float32_logits():
    """A bf16 head: the logits are made in float32 from the bf16 values (never rounded to
    bf16), so the loss is the float32 composite's on the widened weights; the gradients
    come back in bf16."""
    h, w, b = (x.detach().to(torch.bfloat16).requires_grad_(True) for x in head(seed=8))
    ref = teacher("logits").float()
    loss, value = kt.linear_logits_loss(h, w, ref, bias=b, chunk_rows=4)
    loss.backward()
    wide = [x.detach().float().requires_grad_(True) for x in (h, w, b)]
    expected_loss, expected_value, expected_grads = unfused(*wide, ref)
    assert value.dtype == torch.float32 and w.grad.dtype == torch.bfloat16
    torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-6)
    for x, e in zip((h, w, b), expected_grads):
        torch.testing.assert_close(x.grad, e.to(torch.bfloat16), rtol=1e-2, atol=1e-4)


def test_a_scaled_loss_scales_the_gradients_and_nothing_flows_into_the_teacher():
    h, w, b = head(seed=10)
    rh, rw, rb = (x.detach().requires_grad_(True) for x in head(seed=11))
    loss, _ = kt.linear_logits_loss(h, w, (rh, rw, rb), bias=b, chunk_rows=4)
    (3.0 * loss).backward()
    expected = unfused(*(x.detach().requires_grad_(True) for x in (h, w, b)),
                       (rh.detach(), rw.detach(), rb.detach()))[2]
    for x, e in zip((h, w, b), expected):
        torch.testing.assert_close(x.grad, 3.0 * e, **TOLERANCE)
    assert rh.grad is None and rw.grad is None and rb.grad is None


def test_opcheck():
    h, w, b = head(seed=12, rows=7, vocab=11)
    rh, rw = (x.detach() for x in head(seed=13, rows=7, vocab=11)[:2])
    args = (h, w, b, None, rh, rw, None, "jensen-shannon", row_mask(rows=7), 0.7, 0.4, None, 3,
            None)
    torch.library.opcheck(torch.ops.klgrad.linear_logits_loss.default, args)


def test_compiled_step_traces_the_op_and_matches_eager():
    """torch.compile(fullgraph=True) of a step ending in linear_logits_loss (a graph break
    would raise): the parameters' gradients equal eager mode's to float64 rounding (the
    compiled tanh may round differently)."""
    model = torch.nn.Linear(FEATURES, VOCAB).double()
    x = torch.randn(ROWS, FEATURES, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(18))
    ref = teacher("logits")

    def step(m):
        return kt.linear_logits_loss(torch.tanh(x), m.weight, ref, bias=m.bias, chunk_rows=4,
                                     divergence="forward-kl")[0]

    grads = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        model.zero_grad()
        fn(model).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, **TOLERANCE)


# ---- bad arguments ------------------------------------------------------------------------

def bad_call(**changes):
    h, w, b = head(seed=14)
    kw = dict(hidden=h, weight=w, ref=teacher("logits"), bias=b, chunk_rows=4)
    kw.update(changes)
    return kt.linear_logits_loss(kw.pop("hidden"), kw.pop("weight"), kw.pop("ref"), **kw)


@pytest.mark.parametrize("changes,error,words", [
    (dict(hidden=torch.zeros(ROWS)), ValueError, "hidden= has shape (13,)"),
    (dict(hidden=torch.zeros(ROWS, FEATURES, dtype=torch.int64)), TypeError,
     "hidden= must be a floating-point torch tensor, got dtype torch.int64"),
    (dict(weight=torch.zeros(VOCAB, FEATURES + 1, dtype=torch.float64)), ValueError,
     "weight= has shape (37, 7) but hidden= has 6 features"),
    (dict(weight=torch.zeros(VOCAB, FEATURES)), TypeError,
     "weight= has dtype torch.float32 but hidden= has torch.float64"),
    (dict(weight=torch.zeros(VOCAB, FEATURES, dtype=torch.float64, device="meta")),
     ValueError, "weight= is on meta but hidden= is on cpu"),
    (dict(bias=torch.zeros(VOCAB - 1, dtype=torch.float64)), ValueError,
     "bias= has shape (36,); the bias has V = 37 entries"),
    (dict(ref=torch.zeros(ROWS, VOCAB + 1, dtype=torch.float64)), ValueError,
     "ref= has shape (13, 38)"),
    (dict(ref=[1, 2, 3, 4]), ValueError, "got 4 entries"),
    (dict(ref="logits"), TypeError, "ref= must be the teacher's logits"),
    (dict(ref=(torch.zeros(ROWS, 2, dtype=torch.float64),
               torch.zeros(VOCAB, 3, dtype=torch.float64))), ValueError,
     "ref[1]= has shape (37, 3) but ref[0]= has 2 features"),
    (dict(ref=(torch.zeros(ROWS + 1, 2), torch.zeros(VOCAB, 2))), ValueError,
     "ref= gives (14,) rows over a vocabulary of 37"),
    (dict(mask=torch.ones(ROWS + 1, dtype=bool)), ValueError, "mask= has shape (14,)"),
    (dict(chunk_rows=0), ValueError, "chunk_rows= must be a positive int, got 0"),
    (dict(chunk_rows=2.5), ValueError, "chunk_rows= must be a positive int, got 2.5"),
    (dict(divergence="kl"), ValueError, "divergence= \"kl\" is unknown"),
    (dict(divergence="forward-kl-top-k"), ValueError, "needs top_k="),
    (dict(divergence="forward-kl-top-k", top_k=VOCAB + 1), ValueError, "top_k= must be"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(divergence="jensen-shannon", lam=1.0), ValueError, "lambda"),
])
def test_bad_arguments_are_refused_by_name(changes, error, words):
    with pytest.raises(error) as info:
        bad_call(**changes)
    assert words in str(info.value)


def test_no_row_still_refuses_a_bad_divergence():
    h, w, b = head(seed=15, rows=0)
    with pytest.raises(ValueError, match="is unknown"):
        kt.linear_logits_loss(h, w, torch.zeros(0, VOCAB, dtype=torch.float64), bias=b,
                              divergence="kl")


# ---- memory -------------------------------------------------------------------------------

@pytest.mark.parametrize("divergence,top_k,teacher_form,chunks", [
    ("jensen-shannon", None, "head", 2), ("forward-kl-top-k-tail", 8, "head", 2),
    ("reverse-kl", None, "logits", 1)])
def test_peak_memory_is_the_chunks_of_logits_that_must_exist(divergence, top_k, teacher_form,
                                                             chunks):
    """N = 2,048 rows at V = 4,096 in float32: the whole logits would be 32 MiB each (policy,
    teacher, gradient); the fused form with chunks of 64 rows (1 MiB of logits) holds, beyond
    its outputs (the gradients of hidden, weight and bias, and the values), the chunk's
    policy logits, which the kernel overwrites with their gradient (grad_in_place), the
    chunk's teacher logits when they are made from the teacher's head (a view of the
    teacher's logits when those are given, so not counted), and the chunk's small tensors:
    the gradient's product with the weight (chunk x H), its sum over rows for the bias (V),
    the values and the top-k indices. Measured (torch 2.13, this machine): 2.000 and 2.004
    chunks with the head, 1.016 with the logits."""
    rows, features, vocab, chunk = 2048, 64, 4096, 64
    h, w, b = (x.detach().requires_grad_(True)
               for x in head(seed=16, rows=rows, features=features, vocab=vocab,
                             dtype=torch.float32))
    rh, rw = (x.detach() for x in head(seed=17, rows=rows, features=features, vocab=vocab,
                                       dtype=torch.float32)[:2])
    ref = (rh, rw) if teacher_form == "head" else rh @ rw.T  # the logits: an input
    peak, (loss, _) = peak_allocated(lambda: kt.linear_logits_loss(
        h, w, ref, bias=b, divergence=divergence, top_k=top_k, chunk_rows=chunk))
    chunk_logits = chunk * vocab * 4
    small = (chunk * features + vocab + chunk) * 4 + chunk * (top_k or 0) * 8
    outputs = (h.numel() + w.numel() + b.numel() + rows) * 4  # the gradients and the values
    extra = peak - outputs
    print(f"peak {peak} B, outputs {outputs} B, extra {extra} B = "
          f"{extra / chunk_logits:.3f} chunk logits ({chunk_logits} B); small {small} B")
    assert extra <= chunks * chunk_logits + small
    assert extra > chunks * chunk_logits  # the chunks counted do exist
    assert peak < rows * vocab * 4  # less than one whole N x V logits tensor
    loss.backward()
    assert h.grad is not None
