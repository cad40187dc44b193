"""
The compiled wire path (relayd/ws/_cwire.c) is optional: where no C compiler or no Python headers
exist, the build skips it and relayd runs its pure-Python twin (relayd/ws/wire.py says which runs).
Everything else about the package is in setup.cfg.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relayd.ws._cwire",
            sources=["relayd/ws/_cwire.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wno-missing-braces"],
            optional=True,
        )
    ]
)
