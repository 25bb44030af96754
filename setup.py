"""Build the optional C run loop; vmd falls back to the pure-Python loop when it cannot be built."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("vmd._runloop", ["src/vmd/_runloop.c"], extra_compile_args=["-O2", "-Wall"], optional=True),
    ],
)
