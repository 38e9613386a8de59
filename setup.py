"""Build the specdec_kernels._C extension: C++ CPU kernels always, CUDA kernels when torch has CUDA.

CUDA sources are compiled when the installed torch was built with CUDA *and* a toolkit is found
(``torch.utils.cpp_extension.CUDA_HOME``); the build says which backends it compiled and why. It never drops the
CUDA kernels silently (docs/BUILD.md §3):

* ``SPECDEC_CUDA=1``: the CUDA kernels are required; the build fails when torch has no CUDA or no toolkit is found.
* ``SPECDEC_CUDA=0``: the CPU backend only, even with a CUDA torch.
* unset: CUDA kernels with a CUDA torch, and a failure when that torch finds no toolkit (set ``SPECDEC_CUDA=0``
  to build the CPU backend alone there); the CPU backend alone with a CPU torch.

No ``-std`` flag is passed: ``BuildExtension`` passes the dialect its torch's headers are built for (C++17 with
torch 2.11, the lent GPU machines' torch; C++20 from 2.13 on), and CI compiles the sources in both.
``DEBUG=1`` gives an ``-O0 -g`` build.
"""

import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DEBUG", "0") == "1"
CUDA_WANTED = os.environ.get("SPECDEC_CUDA", "")


def _fail(reason: str):
    sys.exit(f"specdec_kernels: cannot build the CUDA backend: {reason}")


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extension():
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    opt = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
    cxx = opt + ["-fopenmp"]
    cuda_sources = _sources("csrc/cuda/*.cu")
    cuda_sources = [s for s in cuda_sources if not s.endswith("standalone_check.cu")]
    if CUDA_WANTED not in ("", "0", "1"):
        sys.exit(f"specdec_kernels: SPECDEC_CUDA must be 0, 1 or unset, got {CUDA_WANTED!r}")
    if CUDA_WANTED == "0":
        print("specdec_kernels: building the CPU backend only (SPECDEC_CUDA=0)")
    elif torch.version.cuda is None:
        if CUDA_WANTED == "1":
            _fail(f"SPECDEC_CUDA=1 but this torch ({torch.__version__}) was built without CUDA")
        print("specdec_kernels: building the CPU backend only (this torch has no CUDA)")
    elif CUDA_HOME is None:
        _fail(f"torch {torch.__version__} has CUDA {torch.version.cuda} but no CUDA toolkit was found (no nvcc on "
              "PATH, no CUDA_HOME, no /usr/local/cuda); install one or point CUDA_HOME at it, or set SPECDEC_CUDA=0 "
              "to build the CPU backend only")
    elif not cuda_sources:
        _fail("no CUDA sources found under csrc/cuda")
    else:
        print(f"specdec_kernels: building the CPU and CUDA backends (CUDA {torch.version.cuda}, {CUDA_HOME})")
        # nvcc rejects -g0; device debug info needs -G.
        nvcc = (["-O0", "-g", "-G"] if DEBUG else ["-O3"]) + ["--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            "specdec_kernels._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DSPECDEC_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    return CppExtension(
        "specdec_kernels._C",
        sources,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
