"""The Triton kernels' tests run in a pytest process of their own: TRITON_INTERPRET=1 must be
in the environment before triton is imported (Triton then runs @triton.jit kernels on CPU
tensors, numpy underneath), and this conftest is loaded before any test module imports
klgrad or triton. Run: python -m pytest -q python/tests_triton (scripts/test.sh, stage v).

The tests record the worst errors they measure (record_error) and the run prints them at
its end, for the record (docs/logits.md quotes them)."""
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

_WORST = {}


@pytest.fixture
def record_error():
    """record_error(name, error): keeps the largest error measured under each name."""
    def record(name, error):
        _WORST[name] = max(_WORST.get(name, 0.0), float(error))
    return record


def pytest_configure(config):
    # The interpreter evaluates both sides of every tl.where with numpy, so the discarded
    # side's inf - inf or log(0) warns; the kernels select around them (a NaN reaching a
    # result would fail the comparisons with the C++ kernel).
    config.addinivalue_line("filterwarnings",
                            "ignore::RuntimeWarning:triton.runtime.interpreter")


def pytest_terminal_summary(terminalreporter):
    if _WORST:
        terminalreporter.write_sep("-", "worst errors measured")
        for name in sorted(_WORST):
            terminalreporter.write_line(f"{name}: {_WORST[name]:.2e}")
