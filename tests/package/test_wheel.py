#!/usr/bin/python3
"""The Python wheel works after `pip install` alone.

The wheel that `cmake --build BUILD --target python_wheel` made
(BUILD/dist, fixture package.wheel) is installed with pip, offline, into a
fresh virtual environment that sees none of the system's packages but
numpy (a .pth file naming a folder that holds only numpy and its
metadata). Then, with no environment variable of lmap's set and no loader
path, `import lmap` and lmap.Client(...).labels(...) against a real lmapd
on 127.0.0.1 answer what `lmap get` computes from the store; the library
loaded is the wheel's own copy; lmap.__version__, lmap.library_version()
and `lmapd --version` agree; a library of another minor version is refused. The sdist builds offline into a pure-Python
wheel of the same version without a library. Stops lmapd by its PID."""
import glob
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from e2e_common import LMAP, LMAPD, TMP, check, start_daemon, stop_daemon, summary  # noqa: E402

DIST = os.environ.get("LMAP_DIST", "dist")
NUMPY = "/usr/lib/python3/dist-packages"


def clean_env(**extra):
    """Only what a shell needs: no LMAP_*, no LD_LIBRARY_PATH, no PYTHONPATH."""
    env = {"PATH": "/usr/bin:/bin", "HOME": TMP, "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def venv_with_numpy(path):
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", path], check=True, env=clean_env())
    py = os.path.join(path, "bin", "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, env=clean_env()).stdout.strip()
    only = os.path.join(path, "system-numpy")
    os.makedirs(only)
    for name in os.listdir(NUMPY):
        if name == "numpy" or (name.startswith("numpy-") and name.endswith(("-info"))):
            os.symlink(os.path.join(NUMPY, name), os.path.join(only, name))
    with open(os.path.join(site, "system-numpy.pth"), "w") as f:
        f.write(only + "\n")
    return py


def main():
    os.makedirs(TMP, exist_ok=True)
    version = subprocess.run([LMAPD, "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    wheels = glob.glob(os.path.join(DIST, "lmap-%s-py3-none-linux_*.whl" % version))
    sdists = glob.glob(os.path.join(DIST, "lmap-%s.tar.gz" % version))
    check(len(wheels) == 1 and len(sdists) == 1,
          "python_wheel made one wheel tagged py3-none-linux_* and one sdist of version %s: %s"
          % (version, os.listdir(DIST) if os.path.isdir(DIST) else "no " + DIST))
    if not wheels or not sdists:
        return summary()

    venv = os.path.join(TMP, "wheel-venv")
    py = venv_with_numpy(venv)
    r = subprocess.run([py, "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
                        wheels[0]], capture_output=True, text=True, env=clean_env())
    check(r.returncode == 0, "pip install %s offline into a fresh venv (%s)"
          % (os.path.basename(wheels[0]), r.stderr[-400:]))
    r = subprocess.run([py, "-c", "import numpy, torch"], capture_output=True, env=clean_env())
    check(r.returncode != 0, "the venv sees numpy but not the system's other packages (torch)")

    store = os.path.join(TMP, "wheel.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "20", "--level", "1", "--force",
                    "--no-progress"], check=True, capture_output=True)
    ids = subprocess.run([LMAP, "ids", store], capture_output=True, text=True, check=True).stdout.split()
    box = [0.1, 0.2, 0.7, 0.9]
    want = json.loads(subprocess.run([LMAP, "get", store, ids[3], "--box", ",".join(map(str, box))],
                                     capture_output=True, text=True, check=True).stdout)
    p, port, _ = start_daemon(store)
    try:
        script = (
            "import json, lmap\n"
            "with lmap.Client('http://127.0.0.1:%d') as c:\n"
            "    probs = c.labels([%r], [%r])\n"
            "maps = [l.split()[-1] for l in open('/proc/self/maps') if 'liblmap' in l]\n"
            "print(json.dumps({'probs': probs[0].tolist(), 'version': lmap.__version__,\n"
            "                  'library': lmap.library_version(), 'maps': sorted(set(maps)),\n"
            "                  'file': lmap.__file__}))\n" % (port, ids[3], box))
        r = subprocess.run([py, "-c", script], capture_output=True, text=True, env=clean_env(), cwd=TMP)
        check(r.returncode == 0, "import lmap; lmap.Client(...).labels(...) with no LMAP_LIBRARY (%s)"
              % r.stderr[-600:])
        if r.returncode == 0:
            got = json.loads(r.stdout)
            diff = max(abs(a - b) for a, b in zip(got["probs"], want["probs"]))
            check(len(got["probs"]) == len(want["probs"]) and diff <= 1e-6,
                  "the soft label equals lmap get's (max difference %.2g)" % diff)
            check(len(got["maps"]) == 1 and "/site-packages/lmap/_libs/liblmap.so" in got["maps"][0]
                  and got["file"].startswith(venv),
                  "the library loaded is the wheel's own copy: %s" % got["maps"])
            check(got["version"] == version and got["library"] == version,
                  "lmap.__version__ %s and lmap.library_version() %s are lmapd --version's %s"
                  % (got["version"], got["library"], version))
        # A library of another minor version is refused, naming both.
        script = ("import lmap, lmap._lib as L\n"
                  "L.__version__ = '9.9.0'\n"
                  "try:\n"
                  "    lmap.Client('http://127.0.0.1:%d')\n"
                  "except lmap.LibraryNotFound as e:\n"
                  "    print(e)\n" % port)
        r = subprocess.run([py, "-c", script], capture_output=True, text=True, env=clean_env(), cwd=TMP)
        check("liblmap %s, but this package is 9.9.0" % version in r.stdout,
              "a liblmap of another version is refused, naming both (%s)" % (r.stdout + r.stderr)[-300:])
    finally:
        check(stop_daemon(p) == 0, "lmapd exit 0")

    # The sdist: offline, into a pure-Python wheel without a library.
    out = os.path.join(TMP, "sdist-wheel")
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run(["/usr/bin/python3", "-m", "pip", "wheel", "--no-index", "--no-deps",
                        "--no-build-isolation", "--disable-pip-version-check", "-w", out, sdists[0]],
                       capture_output=True, text=True, env=clean_env())
    built = glob.glob(os.path.join(out, "lmap-%s-py3-none-any.whl" % version))
    check(r.returncode == 0 and len(built) == 1,
          "the sdist builds offline into lmap-%s-py3-none-any.whl (%s)" % (version, r.stderr[-300:]))
    if built:
        names = subprocess.run(["/usr/bin/python3", "-m", "zipfile", "-l", built[0]],
                               capture_output=True, text=True, check=True).stdout
        check("lmap/VERSION" in names and "_libs" not in names,
              "the sdist's wheel carries the version and no library")
    shutil.rmtree(venv, ignore_errors=True)
    return summary()


if __name__ == "__main__":
    raise SystemExit(main())
