"""klgrad.torch.logits_loss and the op klgrad::logits_loss on the Triton backend (under the
interpreter, on CPU tensors), against the same calls on the C++ kernel; the op's CUDA
registration; the errors of a backend that cannot run."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import klgrad
import klgrad.torch as kt
from klgrad.testing import row_relative_error as grad_error
from test_triton_logits import TOL, logits

# float16 gradients: each backend rounds its float32 gradient (equal to ~1e-6) to float16
# once, so they can differ by one float16 unit in the last place: 2^-10 relative.
TOL16 = 2.0 ** -10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("divergence,top_k", [("jensen-shannon", None),
                                              ("forward-kl-top-k-tail", 7)])
def test_logits_loss_backward_matches_the_kernel(divergence, top_k, dtype):
    z, zr = logits(rows=6, vocab=500, seed=11, dtype=dtype)
    mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    grads, losses = [], []
    for backend in ("triton", "kernel"):
        x = z.clone().requires_grad_(True)
        loss, value = kt.logits_loss(x, zr, divergence=divergence, top_k=top_k, mask=mask,
                                     temperature=0.7, lam=0.3, backend=backend)
        (2 * loss).backward()
        assert loss.dtype == torch.float32 and value.shape == (6,)
        grads.append(x.grad)
        losses.append(float(loss))
    assert grads[0].dtype == dtype
    assert grad_error(grads[0], grads[1]) <= (TOL if dtype == torch.float32 else TOL16)
    assert abs(losses[0] - losses[1]) <= TOL * abs(losses[1])


def test_opcheck_on_the_triton_backend():
    """Schema, fake kernel and autograd registration hold for backend="triton"."""
    z, zr = logits(rows=2, vocab=40, seed=12)
    args = (z.requires_grad_(True), zr, "reverse-kl", None, 0.8, 0.5, None, "triton")
    torch.library.opcheck(torch.ops.klgrad.logits_loss.default, args)


def test_the_op_has_a_cuda_kernel_of_its_own():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("klgrad::logits_loss", "CUDA")


def run_python(code, env, stream="stderr"):
    """(exit code, stderr or stdout) of `code` in a fresh interpreter with this package
    importable."""
    paths = [os.path.dirname(os.path.dirname(klgrad.__file__))] + sys.path
    env = dict(env, PYTHONPATH=os.pathsep.join(paths))
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
                         env=env, capture_output=True, text=True, timeout=300)
    return out.returncode, getattr(out, stream) if out.returncode == 0 else out.stderr


def test_a_backend_that_cannot_run_says_why():
    """In a fresh interpreter without TRITON_INTERPRET: with triton made unimportable
    (sys.modules["triton"] = None) the Triton backend's first use says what is missing (on
    a CUDA tensor "auto" takes this same path); with triton, CPU tensors are refused naming
    the variable to set."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    rc, err = run_python("""
        import sys
        sys.modules["triton"] = None
        import torch, klgrad
        z = torch.randn(2, 5)
        try:
            klgrad.logits_divergence(z, z, backend="triton")
        except RuntimeError as e:
            print(e, file=sys.stderr)
        del sys.modules["triton"]
        klgrad.triton_logits.kernels.cache_clear()
        klgrad.logits_divergence(z, z, backend="triton")
        """, env)
    assert "runs only under Triton's interpreter: set TRITON_INTERPRET=1" in err
    assert rc == 1 and "Triton, which is not installed: pip install triton" in err


def test_the_kernels_compile_for_a_gpu():
    """Every form compiles for an H100 (sm_90; Triton's own ptxas) with bfloat16 logits, a
    mask and a float32 gradient, in a process without the interpreter: the interpreter runs
    the kernels as Python and would not see what only the compiler refuses."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    rc, out = run_python("""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from klgrad import _triton_kernels as k
        pointers = dict(z_ptr="*bf16", r_ptr="*bf16", g_ptr="*fp32", value_ptr="*fp32",
                        status_ptr="*i32", mask_ptr="*u8", scale_ptr="*fp32", thr_ptr="*fp32",
                        take_ptr="*i32", idx_ptr="*i64")
        scalars = dict(V="i32", K="i32", stride_z="i64", stride_r="i64", stride_g="i64",
                       inv_tau="fp32", lam="fp32")
        flags = dict(HAS_MASK=True, WRITE_GRAD=True, BLOCK=2048)
        for name, form in k.FORMS.items():
            signature = dict(pointers, **scalars, FORM="constexpr",
                             **{f: "constexpr" for f in flags})
            source = ASTSource(fn=k.logits_rows, signature=signature,
                               constexprs=dict(flags, FORM=form))
            assert "cubin" in triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm
            print(name, "compiled")
        """, env, stream="stdout")
    assert rc == 0, out
    assert out.count("compiled") == 7
