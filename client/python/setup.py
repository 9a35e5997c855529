"""Build of the lmap Python package (pyproject.toml holds the rest).

The version comes from lmap/_version.py (CMake's, see there). A package
folder that holds lmap/_libs/liblmap.so.* (the staging copy that
`cmake --build BUILD --target python_wheel` makes) gives a wheel that
carries liblmap, tagged py3-none-<this platform>: the library is C, not
tied to a Python ABI, but it is tied to the machine it was built for.
Without it the package is pure Python and finds liblmap at run time."""
import glob
import os
import runpy

from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))
version = runpy.run_path(os.path.join(here, "lmap", "_version.py"))["__version__"]
bundled = glob.glob(os.path.join(here, "lmap", "_libs", "liblmap.so*"))
options = {}
if bundled:
    from setuptools.dist import Distribution
    from wheel.bdist_wheel import bdist_wheel

    class WithLibrary(Distribution):
        """Installed as platform code, not pure Python."""

        def has_ext_modules(self):
            return True

    class PlatformWheel(bdist_wheel):
        def get_tag(self):
            return ("py3", "none", super().get_tag()[2])

    options = {"distclass": WithLibrary, "cmdclass": {"bdist_wheel": PlatformWheel}}

setup(version=version,
      package_data={"lmap": ["VERSION"] + (["_libs/liblmap.so*"] if bundled else [])},
      **options)
