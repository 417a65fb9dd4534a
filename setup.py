"""Build agentcore: the Cython sources in the top-level _ext/ folder become the subpackage agentcore._ext."""

import os

from setuptools import Extension, find_packages, setup

# AGENTCORE_NO_EXTENSIONS=1 asks for an honest pure-Python build; otherwise a failing compile fails the build.
NO_EXTENSIONS = bool(os.environ.get("AGENTCORE_NO_EXTENSIONS"))
MODULES = ("subjects", "envelope", "cache", "batch", "wire", "eager", "ledger", "dedup", "slots")

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension(f"agentcore._ext.{name}", [f"_ext/{name}.pyx"], extra_compile_args=["-O3"]) for name in MODULES],
        compiler_directives={"language_level": "3", "embedsignature": True},
    )

setup(
    packages=[*find_packages(include=["agentcore", "agentcore.*"]), "agentcore._ext"],
    package_dir={"agentcore": "agentcore", "agentcore._ext": "_ext"},
    package_data={"agentcore": ["py.typed"], "agentcore._ext": ["*.pyx", "*.pyi"]},
    ext_modules=ext_modules,
    zip_safe=False,
)
