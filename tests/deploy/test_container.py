#!/usr/bin/python3
"""The container image, built and run: `docker build` of the repository's
Dockerfile, then containers of it on this machine's loopback (--network
host, never a bridge address):
- it serves the mounted store with no command given, answers equal to
  `lmap get` on the host byte for byte, on a read-only root file system;
- its health check (lmap's own `lmap query --ready`) turns healthy, and
  unhealthy when the served file is changed in place;
- `docker stop` (SIGTERM) drains and exits 0 within docker's 10 s;
- the CLI runs in it (`lmap info` equal to the host's);
- non-root (uid 10001), exec form, EXPOSE 8080, STOPSIGNAL SIGTERM, and no
  compiler or -dev package in the runtime image; its size is printed.
Every container is removed by its id, whatever happens.

Usage: test_container.py LMAP [IMAGE_TAG]   (tests/deploy/run.sh runs it
after tests/deploy/docker-env.sh)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

DOCKER = "/usr/bin/docker"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from e2e_common import check, free_ports, summary  # noqa: E402
LMAP = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "build", "lmap")
TAG = sys.argv[2] if len(sys.argv) > 2 else "lmap:test"
containers = []


def docker(*args, timeout=120, check_rc=True):
    r = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check_rc and r.returncode != 0:
        raise SystemExit("docker %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))
    return r


def run_container(*args):
    cid = docker("run", "-d", "--network", "host", *args).stdout.strip()
    containers.append(cid)
    return cid


def inspect(cid, fmt):
    return docker("inspect", "-f", fmt, cid).stdout.strip()


def wait_health(cid, want, seconds):
    deadline = time.monotonic() + seconds
    status = None
    while time.monotonic() < deadline:
        status = inspect(cid, "{{.State.Health.Status}}")
        if status == want:
            return status
        if inspect(cid, "{{.State.Running}}") != "true":
            break
        time.sleep(0.25)
    return status


def http_get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    t0 = time.monotonic()
    build = subprocess.run([DOCKER, "build", "--network", "host", "-t", TAG, ROOT],
                           capture_output=True, text=True, timeout=1800)
    if build.returncode != 0:
        raise SystemExit("docker build failed:\n" + build.stdout[-3000:] + build.stderr[-3000:])
    built = time.monotonic() - t0
    size = int(inspect(TAG, "{{.Size}}"))
    base = int(docker("image", "inspect", "-f", "{{.Size}}", "debian:12-slim").stdout)
    print("image %s: %.1f MB (%.1f MB over debian:12-slim), built in %.0f s"
          % (TAG, size / 1e6, (size - base) / 1e6, built), flush=True)

    cfg = json.loads(inspect(TAG, "{{json .Config}}"))
    check(cfg["User"] == "10001:10001", "non-root numeric user: %r" % cfg["User"])
    check("8080/tcp" in (cfg.get("ExposedPorts") or {}), "EXPOSE 8080")
    check(cfg.get("StopSignal") == "SIGTERM", "STOPSIGNAL SIGTERM")
    check(cfg["Cmd"] == ["lmapd"] and not cfg.get("Entrypoint"), "exec form, lmapd by default")
    health = (cfg.get("Healthcheck") or {}).get("Test") or []
    check(health[:3] == ["CMD", "lmap", "query"] and "--ready" in health,
          "health check by lmap itself: %r" % health)
    pkgs = docker("run", "--rm", "--network", "host", "--entrypoint", "dpkg-query", TAG,
                  "-W", "-f", "${Package}\n").stdout.split()
    dev = [p for p in pkgs if p.endswith("-dev") or p in ("gcc", "cmake", "make", "cpp")]
    check(pkgs and not dev, "runtime image without build tools: %s" % dev)

    data = tempfile.mkdtemp(prefix="lmap-container-")
    os.chmod(data, 0o755)
    store = os.path.join(data, "store.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "200", "--seed", "21", "--force",
                    "--no-progress"], check=True, capture_output=True)
    os.chmod(store, 0o644)
    ids = subprocess.run([LMAP, "ids", store], capture_output=True, text=True,
                         check=True).stdout.split()
    try:
        # No command: lmapd serves /data/store.lmap. The port is moved with
        # LMAPD_LISTEN (the health check follows it), the root is read-only.
        port = free_ports(1)[0]
        cid = run_container("--read-only", "--health-interval", "1s", "--health-start-period",
                            "30s", "-v", "%s:/data:ro" % data,
                            "-e", "LMAPD_LISTEN=127.0.0.1:%d" % port, TAG)
        status = wait_health(cid, "healthy", 60)
        check(status == "healthy", "health check turns healthy (%s): %s"
              % (status, docker("logs", cid, check_rc=False).stderr[-2000:]))
        check(docker("exec", cid, "id", "-u").stdout.strip() == "10001", "runs as uid 10001")
        for ident, box in [(ids[0], "0,0,1,1"), (ids[57], "0.1,0.2,0.7,0.9"),
                           (ids[-1], "0.3,0.1,0.6,0.5")]:
            st, body = http_get(port, "/v1/labels/%s?box=%s" % (ident, box))
            ref = subprocess.run([LMAP, "get", store, ident, "--box", box],
                                 capture_output=True, check=True).stdout
            check(st == 200 and body + b"\n" == ref, "answer for %s equals lmap get" % ident)
        st, body = http_get(port, "/v1/info")
        check(st == 200 and json.loads(body)["record_count"] == 200, "serves the mounted store")

        # The CLI in the image: lmap info equal to the host's.
        got = docker("run", "--rm", "--network", "host", "-v", "%s:/data:ro" % data, TAG,
                     "lmap", "info", "/data/store.lmap")
        ref = subprocess.run([LMAP, "info", store], capture_output=True, text=True, check=True)
        check(got.stdout.replace("/data/store.lmap", store) == ref.stdout,
              "lmap info in the container equals the host's")

        # SIGTERM from docker stop: drained and exit 0 within its 10 s.
        t = time.monotonic()
        docker("stop", cid, timeout=60)
        took = time.monotonic() - t
        code = inspect(cid, "{{.State.ExitCode}}")
        logs = docker("logs", cid).stderr
        check(code == "0" and took < 10 and '"event":"stopped"' in logs,
              "docker stop: exit %s after %.1f s" % (code, took))

        # The health check can fail: a store changed in place under lmapd
        # makes /readyz 503, and the container unhealthy.
        port = free_ports(1)[0]
        cid = run_container("--health-interval", "1s", "--health-retries", "2",
                            "-v", "%s:/data:ro" % data, "-e", "LMAPD_LISTEN=127.0.0.1:%d" % port,
                            TAG)
        check(wait_health(cid, "healthy", 60) == "healthy", "second container healthy")
        with open(store, "ab") as f:
            f.write(b"changed in place")
        status = wait_health(cid, "unhealthy", 30)
        last = json.loads(inspect(cid, "{{json .State.Health}}"))["Log"][-1]
        check(status == "unhealthy" and "not ready (unavailable)" in last["Output"],
              "unhealthy after the store changed in place (%s): %s" % (status, last["Output"]))
    finally:
        for cid in containers:
            docker("rm", "-f", cid, check_rc=False)
        shutil.rmtree(data, ignore_errors=True)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
