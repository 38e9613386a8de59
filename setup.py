"""Build the specdec_kernels._C extension: C++ CPU kernels always, CUDA kernels when torch has CUDA.

CUDA sources are compiled only when the installed torch was built with CUDA *and* a toolkit is found
(``torch.utils.cpp_extension.CUDA_HOME``); the build says which backends it compiled and why.
``DEBUG=1`` gives an ``-O0 -g`` build.
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DEBUG", "0") == "1"


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extension():
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    opt = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
    cxx = opt + ["-fopenmp"]
    cuda_sources = _sources("csrc/cuda/*.cu")
    cuda_sources = [s for s in cuda_sources if not s.endswith("standalone_check.cu")]
    if torch.version.cuda is None:
        print("specdec_kernels: building the CPU backend only (this torch has no CUDA)")
    elif CUDA_HOME is None:
        print("specdec_kernels: building the CPU backend only (torch has CUDA but no CUDA toolkit was found)")
    elif not cuda_sources:
        print("specdec_kernels: building the CPU backend only (no CUDA sources)")
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
