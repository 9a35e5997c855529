"""The package's version, which CMake defines once (project(lmap VERSION ...)
in the top CMakeLists.txt): a built package (wheel, sdist) carries it in
lmap/VERSION, written by the build (client/python/CMakeLists.txt); a source
checkout reads it from CMakeLists.txt itself."""
import os
import re

_here = os.path.dirname(os.path.abspath(__file__))


def _read():
    try:
        with open(os.path.join(_here, "VERSION")) as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    cmake = os.path.join(_here, "..", "..", "..", "CMakeLists.txt")
    try:
        with open(cmake) as f:
            m = re.search(r"^project\(lmap VERSION ([0-9]+\.[0-9]+\.[0-9]+)", f.read(), re.M)
    except FileNotFoundError:
        m = None
    if m is None:
        raise RuntimeError("lmap: no version: neither %s nor the source tree's CMakeLists.txt"
                           % os.path.join(_here, "VERSION"))
    return m.group(1)


__version__ = _read()
