"""bench/gpu_check_logits.py --cpu runs (exit 0) and prints its two tables, with an
accuracy line for every divergence and top-k form in each dtype. Nothing about its numbers
is asserted: they are for the record (the accuracy is tested in test_triton_logits.py, and
times are no test's business)."""
import os
import pathlib

from test_triton_ops import run_python

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "gpu_check_logits.py"


def test_the_gpu_check_runs_on_the_cpu():
    rc, out = run_python(f"import runpy, sys; sys.argv = ['{SCRIPT}', '--cpu']; "
                         f"runpy.run_path('{SCRIPT}', run_name='__main__')",
                         dict(os.environ, TRITON_INTERPRET="1"), stream="stdout")
    assert rc == 0, out
    assert "Triton kernels under TRITON_INTERPRET=1" in out
    assert "| V | dtype | divergence | value | gradient (row scale) |" in out
    assert "| V | dtype | divergence | method | ms | peak MiB | |" in out
    for form in ("reverse-kl", "forward-kl", "jensen-shannon", "forward-kl-top-k",
                 "reverse-kl-top-k", "forward-kl-top-k-tail", "reverse-kl-top-k-tail"):
        for dtype in ("float32", "float16"):
            assert f"| 1000 | {dtype} | {form} |" in out
