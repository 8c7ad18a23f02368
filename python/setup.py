"""Builds klgrad._klgrad with CMake (CMakeLists.txt) through scikit-build; the package's
version is the C++ library's (include/klgrad/version.hpp)."""
import os
import re

from skbuild import setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "include", "klgrad", "version.hpp")) as f:
    version = re.search(r'#define KLGRAD_VERSION_STRING "([^"]+)"', f.read()).group(1)

setup(
    name="klgrad",
    version=version,
    description="Exact KL gradients for RL trainers: Python bindings of the klgrad headers",
    license="MIT",
    packages=["klgrad"],
    python_requires=">=3.9",
    install_requires=[],  # numpy and torch come from Debian (python3-numpy, python3-torch)
    cmake_args=["-DCMAKE_BUILD_TYPE=Release"],
)
