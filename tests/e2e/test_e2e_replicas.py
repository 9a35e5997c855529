#!/usr/bin/python3
"""End-to-end: three lmapd replicas (plain processes) behind HAProxy run with
deploy/haproxy/haproxy.cfg as shipped (its addresses from the environment),
and at the same time liblmap's own failover over the three URLs (`lmap
query URL1,URL2,URL3 --batch`, one liblmap handle per run), under a bounded
load while
  (a) one replica is killed with SIGKILL and started again,
  (b) one is drained with SIGTERM and started again,
  (c) a new store version is rolled out to all three, one at a time, with
      `lmap pull` from a running lmapd --serve-store, then SIGHUP.
Zero failed client requests; every answer through the balancer equals
`lmap get` on the store version its X-Lmap-Store header names, every answer
through liblmap equals one of the two versions; afterwards every replica
serves the new version. The same config also answers over TLS (a
self-signed certificate made here), and deploy/nginx's template, rendered
with envsubst, routes the same way. Prints the requests served and the
longest stall. Everything on 127.0.0.1, bounded in time and count, every
process stopped by its PID. (The Python binding's failover is tested in
tests/python; it cannot be loaded into Python in a sanitizer build, which
runs this test too.)"""
import http.client
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time

from e2e_common import (LMAP, LMAPD, TMP, check, free_ports, launch, stop_daemon, summary,
                        wait_until)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

MAX_SECONDS = 90  # the whole load, at most
MAX_REQUESTS = 200000


def get(port, path, body=None, tls=None):
    if tls:
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=tls)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST" if body else "GET", path, body=body,
                  headers={"Content-Type": "application/json"} if body else {})
        r = c.getresponse()
        return r.status, r.getheader("X-Lmap-Store"), r.read()
    finally:
        c.close()


def wait_for(pred, seconds, what):
    if not wait_until(pred, seconds):
        raise SystemExit("timed out waiting for " + what)


class Replica:
    """An lmapd replica as a plain process."""

    def __init__(self, n, port, store):
        self.n, self.port, self.store, self.p = n, port, store, None

    def start(self):
        self.p, _, _ = launch([LMAPD, "--store", self.store, "--listen", "127.0.0.1:%d" % self.port,
                               "--threads", "2", "--grace", "10"])

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def drain(self):
        """SIGTERM; the exit code."""
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=30)

    def reload(self):
        self.p.send_signal(signal.SIGHUP)

    def stop(self):
        if self.p is not None:
            stop_daemon(self.p)

    def store_id(self):
        return get(self.port, "/v1/info")[1]


class ContainerReplica(Replica):
    """An lmapd replica as a container of IMAGE (--network host), its store
    in a host folder mounted read-only at /data."""
    image = None

    def start(self):
        d = os.path.dirname(os.path.abspath(self.store))
        self.cid = subprocess.run(
            ["/usr/bin/docker", "run", "-d", "--network", "host", "--read-only",
             "-v", "%s:/data:ro" % d, "-e", "LMAPD_STORE=/data/" + os.path.basename(self.store),
             "-e", "LMAPD_LISTEN=127.0.0.1:%d" % self.port, "-e", "LMAPD_GRACE=10",
             self.image], capture_output=True, text=True, check=True).stdout.strip()
        wait_for(lambda: get(self.port, "/readyz")[0] == 200, 30, "container replica")

    def docker(self, *args):
        return subprocess.run(["/usr/bin/docker", *args], capture_output=True, text=True,
                              timeout=60)

    def kill(self):
        self.docker("kill", "-s", "KILL", self.cid)
        self.docker("rm", "-f", self.cid)

    def drain(self):
        self.docker("stop", "-t", "15", self.cid)
        code = self.docker("inspect", "-f", "{{.State.ExitCode}}", self.cid).stdout.strip()
        self.docker("rm", "-f", self.cid)
        return int(code) if code.isdigit() else code

    def reload(self):
        self.docker("kill", "-s", "HUP", self.cid)

    def stop(self):
        if getattr(self, "cid", None):
            self.docker("rm", "-f", self.cid)


def main():
    """With --containers IMAGE (tests/deploy/run.sh), the replicas are
    containers of IMAGE; by default, processes."""
    kind = Replica
    if sys.argv[1:2] == ["--containers"]:
        ContainerReplica.image = sys.argv[2]
        kind = ContainerReplica
    work = os.path.join(TMP, "replicas")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    # Two versions of one dataset: the same ids and maps, v2 stored in f32,
    # so that their answers differ in the last digits.
    v1, v2 = os.path.join(work, "v1.lmap"), os.path.join(work, "v2.lmap")
    for path, enc in ((v1, "f16"), (v2, "f32")):
        subprocess.run([LMAP, "synth", "-o", path, "--images", "400", "--seed", "41",
                        "--encoding", enc, "--force", "--no-progress"], check=True,
                       capture_output=True)
    ids = subprocess.run([LMAP, "ids", v1], capture_output=True, text=True,
                         check=True).stdout.split()
    rng = random.Random(7)
    queries = []
    for _ in range(24):
        x0, y0 = rng.uniform(0, 0.5), rng.uniform(0, 0.5)
        queries.append((rng.choice(ids), [round(x0, 3), round(y0, 3),
                                          round(rng.uniform(x0 + 0.1, 1), 3),
                                          round(rng.uniform(y0 + 0.1, 1), 3)]))
    expected = {}  # store path -> [item per query], as `lmap get` prints it
    for path in (v1, v2):
        expected[path] = [json.loads(subprocess.run(
            [LMAP, "get", path, ident, "--box", ",".join(map(str, box)), "--format", "sparse"],
            capture_output=True, text=True, check=True).stdout) for ident, box in queries]

    # The rollout's source: a running lmapd that serves its store file.
    source, source_port, _ = launch([LMAPD, "--store", v2, "--listen", "127.0.0.1:0",
                                     "--serve-store"])
    ports = free_ports(4)
    replicas = []
    for i in range(3):
        served = os.path.join(work, "replica%d.lmap" % (i + 1))
        shutil.copyfile(v1, served)
        replicas.append(kind(i + 1, ports[i], served))
    haproxy = nginx = None
    try:
        for r in replicas:
            r.start()
        id1, id2 = replicas[0].store_id(), get(source_port, "/v1/info")[1]
        by_store = {id1: expected[v1], id2: expected[v2]}
        versions = list(by_store.values())
        check(id1 != id2 and len(id1) == 16, "two versions, two store ids (%s, %s)" % (id1, id2))

        # HAProxy with the shipped config; TLS with a certificate made here.
        key, crt, pem = (os.path.join(work, n) for n in ("key.pem", "crt.pem", "lmap.pem"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", crt, "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                       capture_output=True)
        with open(pem, "w") as f:
            f.write(open(crt).read() + open(key).read())
        hport, tport = free_ports(2)
        env = dict(os.environ, LMAP_BIND="127.0.0.1:%d" % hport,
                   LMAP_TLS_BIND="127.0.0.1:%d" % tport, LMAP_TLS_CERT=pem,
                   **{"LMAP_REPLICA%d" % r.n: "127.0.0.1:%d" % r.port for r in replicas})
        cfg = os.path.join(ROOT, "deploy", "haproxy", "haproxy.cfg")
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: get(hport, "/readyz")[0] == 200, 15, "haproxy")
        tls = ssl.create_default_context(cafile=crt)
        st, sid, body = get(tport, "/v1/labels/%s?box=0,0,1,1" % ids[0], tls=tls)
        check(st == 200 and sid == id1, "TLS ended at HAProxy, verified against the cert")

        stop = threading.Event()
        lock = threading.Lock()
        stats = {"balancer": 0, "liblmap": 0, "failures": [], "stall": 0.0, "seen": set()}

        def record(kind, seconds, failure=None, store=None):
            with lock:
                stats[kind] += 1
                stats["stall"] = max(stats["stall"], seconds)
                if store:
                    stats["seen"].add(store)
                if failure:
                    stats["failures"].append(failure)

        def through_balancer(k):
            r = random.Random(k)
            n = 0
            while not stop.is_set() and n < MAX_REQUESTS // 8:
                n += 1
                t0 = time.monotonic()
                if r.random() < 0.6:
                    i = r.randrange(len(queries))
                    ident, box = queries[i]
                    path = "/v1/labels/%s?box=%s&format=sparse" % (ident, ",".join(map(str, box)))
                    try:
                        st, sid, body = get(hport, path)
                    except OSError as e:
                        record("balancer", time.monotonic() - t0, "GET: %r" % e)
                        continue
                    ok = st == 200 and sid in by_store and json.loads(body) == by_store[sid][i]
                    record("balancer", time.monotonic() - t0,
                           None if ok else "GET %s: %d %s %s" % (ident, st, sid, body[:200]), sid)
                else:
                    pick = r.sample(range(len(queries)), 8)
                    req = json.dumps({"format": "sparse", "queries": [
                        {"id": queries[i][0], "box": queries[i][1]} for i in pick]}).encode()
                    try:
                        st, sid, body = get(hport, "/v1/labels", req)
                    except OSError as e:
                        record("balancer", time.monotonic() - t0, "POST: %r" % e)
                        continue
                    ok = (st == 200 and sid in by_store and json.loads(body)["results"] ==
                          [by_store[sid][i] for i in pick])
                    record("balancer", time.monotonic() - t0,
                           None if ok else "POST: %d %s %s" % (st, sid, body[:200]), sid)

        urls = ",".join("http://127.0.0.1:%d" % x.port for x in replicas)

        def through_liblmap(k):
            """`lmap query` over the three URLs: each run sends 4 batches of 8
            through one liblmap handle, which fails over on its own."""
            r = random.Random(100 + k)
            n = 0
            while not stop.is_set() and n < MAX_REQUESTS // 32:
                n += 1
                picks = [r.sample(range(len(queries)), 8) for _ in range(4)]
                lines = "".join(json.dumps({"id": queries[i][0], "box": queries[i][1]}) + "\n"
                                for pick in picks for i in pick)
                t0 = time.monotonic()
                got = subprocess.run([LMAP, "query", urls, "--batch", "-", "--batch-size", "8",
                                      "--format", "sparse", "--timeout", "10", "--retries", "3"],
                                     input=lines, capture_output=True, text=True, timeout=120)
                seconds = (time.monotonic() - t0) / 4
                if got.returncode != 0:
                    for _ in picks:
                        record("liblmap", seconds, "lmap query: %s" % got.stderr[-300:])
                    continue
                items = [json.loads(line) for line in got.stdout.splitlines()]
                for j, pick in enumerate(picks):
                    answer = items[8 * j:8 * j + 8]
                    ok = any(answer == [v[i] for i in pick] for v in versions)
                    record("liblmap", seconds, None if ok else
                           "liblmap answer equal to neither version: %s" % answer[:1])

        threads = [threading.Thread(target=through_balancer, args=(k,)) for k in range(3)]
        threads += [threading.Thread(target=through_liblmap, args=(k,)) for k in range(2)]
        started = time.monotonic()
        for t in threads:
            t.start()
        watchdog = threading.Timer(MAX_SECONDS, stop.set)
        watchdog.start()
        try:
            time.sleep(1)
            # (a) SIGKILL, then start again.
            victim = replicas[0]
            victim.kill()
            time.sleep(1.5)
            victim.start()
            time.sleep(1.5)
            # (b) SIGTERM: drained, then start again.
            drained = replicas[1]
            check(drained.drain() == 0, "drained replica exits 0")
            time.sleep(1.5)
            drained.start()
            time.sleep(1.5)
            # (c) The new version, one replica at a time: pull, SIGHUP, wait.
            for r in replicas:
                got = subprocess.run([LMAP, "pull", "http://127.0.0.1:%d/v1/store" % source_port,
                                      "-o", r.store, "--force"], capture_output=True, text=True,
                                     timeout=120)
                check(got.returncode == 0, "pull to replica %d: %s" % (r.n, got.stderr))
                r.reload()
                wait_for(lambda: r.store_id() == id2, 15, "replica %d on v2" % r.n)
                time.sleep(1)
        finally:
            stop.set()
            watchdog.cancel()
            for t in threads:
                t.join()
        took = time.monotonic() - started
        fails = stats["failures"]
        check(not fails, "zero failed requests: %d failed, first %s" % (len(fails), fails[:3]))
        check(stats["balancer"] > 100 and stats["liblmap"] > 20,
              "load ran: %d through HAProxy, %d through liblmap" % (stats["balancer"],
                                                                     stats["liblmap"]))
        check(stats["seen"] == {id1, id2}, "answers from both versions during the rollout")
        check(all(r.store_id() == id2 for r in replicas), "every replica serves v2")
        for _ in range(20):  # after the rollout only v2 answers
            st, sid, _ = get(hport, "/v1/labels/%s?box=0,0,1,1" % ids[1])
            check(st == 200 and sid == id2, "v2 through the balancer")
        print("replicas: %d requests through HAProxy and %d batches through liblmap in %.1f s, "
              "%d failed; longest stall %.0f ms"
              % (stats["balancer"], stats["liblmap"], took, len(fails), stats["stall"] * 1000),
              flush=True)

        # deploy/nginx's template, rendered with envsubst: the same routing.
        nport = free_ports(1)[0]
        nenv = dict(os.environ, LMAP_LISTEN="127.0.0.1:%d" % nport,
                    **{"LMAP_REPLICA%d" % r.n: "127.0.0.1:%d" % r.port for r in replicas})
        conf_dir = os.path.join(work, "nginx")
        os.makedirs(conf_dir)
        rendered = subprocess.run(
            ["envsubst", "$LMAP_LISTEN $LMAP_REPLICA1 $LMAP_REPLICA2 $LMAP_REPLICA3"],
            stdin=open(os.path.join(ROOT, "deploy", "nginx", "lmap.conf.template")),
            capture_output=True, text=True, env=nenv, check=True).stdout
        with open(os.path.join(conf_dir, "lmap.conf"), "w") as f:
            f.write(rendered)
        with open(os.path.join(conf_dir, "nginx.conf"), "w") as f:
            f.write("daemon off; worker_processes 1; pid %(d)s/nginx.pid; error_log %(d)s/error.log;\n"
                    "events { worker_connections 256; }\n"
                    "http { access_log off; client_body_temp_path %(d)s; proxy_temp_path %(d)s;\n"
                    "  fastcgi_temp_path %(d)s; uwsgi_temp_path %(d)s; scgi_temp_path %(d)s;\n"
                    "  include %(d)s/lmap.conf; }\n" % {"d": conf_dir})
        nginx = subprocess.Popen(["nginx", "-c", os.path.join(conf_dir, "nginx.conf"), "-p",
                                  conf_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: get(nport, "/readyz")[0] == 200, 15, "nginx")
        ident, box = queries[0]
        st, sid, body = get(nport, "/v1/labels/%s?box=%s&format=sparse"
                            % (ident, ",".join(map(str, box))))
        check(st == 200 and json.loads(body) == by_store[id2][0], "nginx: a single GET")
        req = json.dumps({"format": "sparse", "queries": [{"id": q[0], "box": q[1]}
                                                          for q in queries]}).encode()
        st, sid, body = get(nport, "/v1/labels", req)
        check(st == 200 and json.loads(body)["results"] == by_store[id2], "nginx: a batch")
        # A replica killed: nginx passes the request on to the next one.
        replicas[2].kill()
        codes = [get(nport, "/v1/labels", req)[0] for _ in range(12)]
        check(codes == [200] * 12, "nginx: no failure with a replica dead: %s" % codes)
    finally:
        for p in (haproxy, nginx):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)
        for r in replicas:
            r.stop()
        stop_daemon(source)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
