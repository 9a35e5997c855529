#!/usr/bin/python3
"""The one-box lab, deploy/compose.yaml, brought up with Debian's
docker-compose as shipped (ports and the store folder from its variables,
every container on the host's network): HAProxy answers on 127.0.0.1 once
all three replicas are ready, answers equal `lmap get`, each replica serves
the folder's store, and a new store installed by `lmap pull` reaches every
replica after `docker-compose kill -s HUP`. `docker-compose down` removes
everything, whatever happens.

Usage: test_compose.py LMAP"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from e2e_common import check, free_ports, summary, wait_until  # noqa: E402
LMAP = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "build", "lmap")
COMPOSE = ["docker-compose", "-p", "lmaptest", "-f", os.path.join(ROOT, "deploy", "compose.yaml")]
def get(port, path, body=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body,
                                 headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.getheader("X-Lmap-Store"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("X-Lmap-Store"), e.read()


def main():
    data = tempfile.mkdtemp(prefix="lmap-compose-")
    os.chmod(data, 0o755)
    store = os.path.join(data, "store.lmap")
    v2 = os.path.join(data, "v2.lmap")
    for path, seed in ((store, 51), (v2, 52)):
        subprocess.run([LMAP, "synth", "-o", path, "--images", "300", "--seed", str(seed),
                        "--force", "--no-progress"], check=True, capture_output=True)
    ports = free_ports(4)
    env = dict(os.environ, LMAP_STORES=data, LMAP_PORT=str(ports[0]),
               **{"LMAP_PORT%d" % i: str(ports[i]) for i in (1, 2, 3)})
    try:
        t0 = time.monotonic()
        up = subprocess.run(COMPOSE + ["up", "-d", "--build"], env=env, capture_output=True,
                            text=True, timeout=1200)
        if up.returncode != 0:
            raise SystemExit("docker-compose up failed:\n" + up.stdout[-3000:] + up.stderr[-3000:])
        ok = wait_until(lambda: all(get(p, "/readyz")[0] == 200 for p in ports), 60, 0.1)
        check(ok, "HAProxy and the three replicas ready")
        print("compose: up in %.0f s" % (time.monotonic() - t0), flush=True)
        ids = subprocess.run([LMAP, "ids", store], capture_output=True, text=True,
                             check=True).stdout.split()
        first = get(ports[1], "/v1/info")[1]
        for ident in ids[:5]:
            st, sid, body = get(ports[0], "/v1/labels/%s?box=0.1,0.2,0.8,0.9" % ident)
            ref = subprocess.run([LMAP, "get", store, ident, "--box", "0.1,0.2,0.8,0.9"],
                                 capture_output=True, check=True).stdout
            check(st == 200 and body + b"\n" == ref and sid == first,
                  "through HAProxy equals lmap get (%s)" % ident)
        batch = json.dumps({"queries": [{"id": i, "box": [0, 0, 1, 1]} for i in ids[:50]],
                            "format": "sparse"}).encode()
        st, _, body = get(ports[0], "/v1/labels", batch)
        check(st == 200 and len(json.loads(body)["results"]) == 50, "a batch through HAProxy")
        check(len({get(p, "/v1/info")[1] for p in ports[1:]}) == 1, "every replica, one store")

        # A new store, copied by lmap pull from an lmapd that serves it,
        # and swapped in by SIGHUP.
        src_port = free_ports(1)[0]
        src = subprocess.Popen([os.path.join(os.path.dirname(LMAP), "lmapd"), "--store", v2,
                                "--listen", "127.0.0.1:%d" % src_port, "--serve-store"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: get(src_port, "/readyz")[0] == 200, 20, 0.1)
            got = subprocess.run([LMAP, "pull", "http://127.0.0.1:%d/v1/store" % src_port,
                                  "-o", store, "--force"], capture_output=True, text=True,
                                 timeout=120)
            check(got.returncode == 0, "lmap pull into the lab's folder: %s" % got.stderr)
        finally:
            src.terminate()
            src.wait(timeout=30)
        subprocess.run(COMPOSE + ["kill", "-s", "HUP", "lmap1", "lmap2", "lmap3"], env=env,
                       capture_output=True, check=True, timeout=60)
        ok = wait_until(lambda: len({get(p, "/v1/info")[1] for p in ports[1:]} - {first}) == 1
                        and first not in {get(p, "/v1/info")[1] for p in ports[1:]}, 20, 0.1)
        check(ok, "every replica on the new store after SIGHUP")
        st, _, body = get(ports[0], "/v1/info")
        check(st == 200 and json.loads(body)["source"].endswith("--seed 52"), "HAProxy: new store")
    finally:
        subprocess.run(COMPOSE + ["down", "--timeout", "15"], env=env, capture_output=True,
                       timeout=300)
        shutil.rmtree(data, ignore_errors=True)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
