"""klgrad.bench with tiny budgets (0.01 s a row): the rows it reports, that it really runs the
user's function forward and backward beside klgrad, that backend= reaches kl_loss only when
given, and its refusals. No timing is asserted: only what a run must report on any machine
(counts, byte sizes derived from the arrays each kernel reads and writes, quartiles in
order).
"""
import pytest

torch = pytest.importorskip("torch")
klgrad = pytest.importorskip("klgrad")
import klgrad.torch as kt  # noqa: E402

TINY = 0.01


def ordered(q):
    return 0 < q["q1"] <= q["median"] <= q["q3"]


def sane(row):
    return ordered(row["items_per_second"]) and ordered(row["of_floor"]) and row["rounds"] >= 5


def batch(b=2, t=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -1 - 2 * torch.rand(b, t, generator=g)
    ref = -1 - 2 * torch.rand(b, t, generator=g)
    mask = torch.rand(b, t, generator=g) < 0.9
    return logp, ref, mask


def test_kernel_row_padded_float():
    (row,) = klgrad.bench("k3-as-loss", shape=(2, 64), seconds=TINY)
    assert row["kernel"] == "C++ kernel k3-as-loss" and row["kind"] == "spec"
    assert row["unit"] == "tokens" and row["items"] == 128 and row["device"] == "cpu"
    # logp, ref, value, coef (4 bytes each) and a mask byte
    assert row["bytes_per_item"] == 17 and row["floor"] == "triad"
    assert row["allocations_per_call"] is None  # counted by the CLI only
    assert sane(row)


def test_the_vectors_the_kernel_ran_on():
    """The C++ rows name the vector set they ran on and this CPU's widest (the names and their
    consistency with Eigen's packets: tests/bench_tests.cpp), and the table says them."""
    rows = klgrad.bench("k1-in-reward", shape=(1, 8), seconds=TINY)
    names = {"avx512", "avx2", "avx", "sse4", "sse2", "neon", "sve", "vsx", "altivec", "other",
             "none"}
    built, cpu = rows[0]["vector_isa"], rows[0]["cpu_vector_isa"]
    assert built in names and cpu in names | {"unknown"}
    text = str(rows)
    assert f"C++ rows: {built} vectors" in text
    assert ("this CPU offers" in text) == (cpu not in (built, "unknown"))


def test_kernel_rows_packed_double_and_several_specs():
    rows = klgrad.bench(["k1-in-reward", klgrad.Spec("k2-as-loss")], tokens=100, lengths=[30, 20],
                        dtype="double", seconds=TINY)
    assert [r["kernel"] for r in rows] == ["C++ kernel k1-in-reward", "C++ kernel k2-as-loss"]
    # packed: no mask byte; logp, ref, value, coef of 8 bytes
    assert all(r["items"] == 100 and r["bytes_per_item"] == 32 and sane(r) for r in rows)


def test_kernel_row_logits_fp16():
    (row,) = klgrad.bench(logits="forward-kl", shape=(1, 4), vocab=32, dtype="fp16",
                          seconds=TINY)
    assert row["kind"] == "logits" and row["unit"] == "rows" and row["items"] == 4
    # z and ref (2 x 32 x 2 bytes) read, a float gradient row and value (33 x 4) written
    assert row["bytes_per_item"] == 260 and row["floor"] == "exp-sum"
    assert row["floor_bytes_per_item"] == 128 and sane(row)


def test_user_fn_beside_klgrad_and_the_floor():
    logp, ref, mask = batch()
    seen = []

    def my_k3(lp, lr, old):
        seen.append((lp.requires_grad, lp.shape, torch.equal(old, logp)))
        x = lr - lp
        return torch.exp(x) - x - 1

    rows = klgrad.bench("k3-as-loss", logp=logp, ref=ref, mask=mask, fn=my_k3, seconds=TINY)
    kernels = [r["kernel"] for r in rows]
    assert kernels == ["your fn (forward + backward)",
                       "klgrad.torch.kl_loss k3-as-loss (forward + backward)",
                       "floor: triad over the kernel's bytes (cpu)",
                       "C++ kernel k3-as-loss"]
    fn_row = rows[0]
    # warm-up (2) and one call a round, each on a leaf of logp's shape; old defaults to logp
    assert len(seen) == 2 + fn_row["rounds"]
    assert all(s == (True, logp.shape, True) for s in seen)
    assert all(r["items"] == logp.numel() and sane(r) for r in rows)
    # the floor's ratio to itself, round by round, is exactly 1
    assert rows[2]["of_floor"] == {"q1": 1.0, "median": 1.0, "q3": 1.0}
    text = str(rows)
    assert "your fn (forward + backward) (tokens)" in text and "of floor       [q1, q3]" in text
    assert text.startswith("klgrad.bench: 2 x 64 tokens, float, your tensors on cpu")


def test_fn_gradient_is_taken(monkeypatch):
    """fn's output reaches backward: its masked mean's gradient arrives at logp."""
    logp, ref, mask = batch()
    grads = []

    def my_k1(lp, lr, old):
        lp.register_hook(lambda g: grads.append(g.clone()))
        return lp - lr

    klgrad.bench("k1-as-loss", logp=logp, ref=ref, mask=mask, fn=my_k1, seconds=TINY)
    # d/dlp of sum(mask * (lp - lr)) / sum(mask) is mask / count, exactly
    want = mask.to(logp.dtype) / mask.sum()
    assert grads and all(torch.equal(g, want) for g in grads)


def test_backend_reaches_kl_loss_only_when_given(monkeypatch):
    logp, ref, mask = batch()
    calls = []
    real = kt.kl_loss

    def recording(*args, **kwargs):
        calls.append(dict(kwargs))
        kwargs.pop("backend", None)
        return real(*args, **kwargs)

    monkeypatch.setattr(kt, "kl_loss", recording)
    klgrad.bench("k3-as-loss", logp=logp, ref=ref, mask=mask, seconds=TINY)
    assert calls and all("backend" not in c for c in calls)
    calls.clear()
    klgrad.bench("k3-as-loss", logp=logp, ref=ref, mask=mask, seconds=TINY, backend="kernel")
    assert calls and all(c["backend"] == "kernel" for c in calls)


@pytest.mark.parametrize("kwargs, message", [
    (dict(shape=(2, 2)), "nothing to measure: give spec="),
    (dict(spec="k1-in-reward"), "no batch: give shape=(B, T), tokens=N"),
    (dict(spec="k1-in-reward", shape=(2, 2), seconds=0), "seconds= must be a time budget > 0"),
    (dict(spec="k1-in-reward", shape=(2, 2), seconds=float("nan")), "seconds= must be"),
    (dict(spec="k1-in-reward", shape=(2, 2), threads=0), "threads= must be a positive int"),
    (dict(spec="k1-in-reward", shape=(0, 2)), "shape[0]= must be a positive int, got 0"),
    (dict(spec="k1-in-reward", shape=(2, 2, 2)), "shape= must be (B, T)"),
    (dict(spec="k1-in-reward", shape=(2, 2), tokens=4), "exclude each other"),
    (dict(spec="k1-in-reward", tokens=8, lengths=[4, 0]), "lengths[i]= must be a positive int"),
    (dict(spec="k1-in-reward", shape=(2, 2), lengths=[2]), "lengths= describes a packed batch"),
    (dict(logits="reverse-kl", shape=(2, 2)), "logits= needs vocab= > 0"),
    (dict(spec="k9-as-loss", shape=(2, 2)), "spec 'k9-as-loss': unknown estimator 'k9'"),
    (dict(logits="kl", shape=(2, 2), vocab=8),
     "logits='kl': unknown divergence; one of reverse-kl, forward-kl, jensen-shannon"),
    (dict(spec="k1-in-reward", shape=(2, 2), dtype="bf16"),
     "sampled tokens are computed in float or double, not bf16"),
    (dict(spec="k1-in-reward", shape=(2, 2), dtype="half"), 'dtype= must be "float"'),
    (dict(spec="k1-in-reward", shape=(2, 2), fn=lambda lp, lr, old: lp), "fn= is timed beside"),
])
def test_refusals(kwargs, message):
    with pytest.raises(ValueError) as e:
        klgrad.bench(**{"seconds": TINY, **kwargs})
    assert message in str(e.value)


def test_tensor_refusals():
    logp, ref, mask = batch()
    with pytest.raises(ValueError, match="give logp= and ref= together"):
        klgrad.bench("k1-in-reward", logp=logp, seconds=TINY)
    with pytest.raises(ValueError, match="takes a padded B x T batch"):
        klgrad.bench("k1-in-reward", logp=logp.flatten(), ref=ref.flatten(), seconds=TINY)
    with pytest.raises(ValueError, match="the batch is logp's own"):
        klgrad.bench("k1-in-reward", logp=logp, ref=ref, shape=(2, 64), seconds=TINY)
    with pytest.raises(ValueError, match="ref= has shape"):
        klgrad.bench("k1-in-reward", logp=logp, ref=ref[:1], seconds=TINY)
    with pytest.raises(TypeError, match="spec= takes a str or a list of str"):
        klgrad.bench([1], shape=(2, 2), seconds=TINY)
