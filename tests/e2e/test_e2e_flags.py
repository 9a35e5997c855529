#!/usr/bin/python3
"""End-to-end: every flag and environment variable that `lmapd --help`
lists parses and takes effect (read back from the `config` line lmapd logs
at start), and every usage error exits 2 with a message. A flag listed in
--help but unknown to this test fails it, so new flags get tested.
(Issue 10 item 6: --max-per-ip once printed the usage and exited 0.)
Loopback only; every process is stopped by its PID."""
import json
import os
import re
import subprocess
import sys

from e2e_common import (LMAP, LMAPD, TMP, check, launch, log_events, stop_daemon, summary,
                        wait_until)

# flag -> (config key, a value other than the default, how it reads back).
NUMERIC = {
    "--threads": ("threads", "3"),
    "--max-body": ("max_body", "65536"),
    "--max-batch": ("max_batch", "77"),
    "--max-answer": ("max_answer", "1048576"),
    "--max-answer-memory": ("max_answer_memory", "2097152"),
    "--max-connections": ("max_connections", "99"),
    "--max-per-ip": ("max_per_ip", "7"),
    "--header-timeout": ("header_timeout", "4"),
    "--idle-timeout": ("idle_timeout", "45"),
    "--grace": ("grace", "9"),
    "--resident-threads": ("resident_threads", "3"),
}
ENV = {"--store": "LMAPD_STORE", "--listen": "LMAPD_LISTEN", "--token-file": "LMAPD_TOKEN_FILE",
       "--log-format": "LMAPD_LOG_FORMAT", "--access-log": "LMAPD_ACCESS_LOG",
       "--no-page-check": "LMAPD_PAGE_CHECK", "--serve-store": "LMAPD_SERVE_STORE",
       "--tls-cert": "LMAPD_TLS_CERT", "--tls-key": "LMAPD_TLS_KEY",
       "--resident": "LMAPD_RESIDENT", "--no-ui": "LMAPD_UI"}
# --tls-cert and --tls-key take effect in test_e2e_tls.py.
OTHER = {"--store", "--listen", "--token-file", "--log-format", "--access-log", "--no-page-check",
         "--serve-store", "--tls-cert", "--tls-key", "--resident", "--help", "--version"}
# --no-ui takes effect in test_e2e_browse.py; its config key is checked here.
OTHER.add("--no-ui")


def config_of(log):
    return log_events(log, "config")[0]["config"]


def usage_error(args, env=None, what=""):
    r = subprocess.run([LMAPD, *args], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, **(env or {})))
    check(r.returncode == 2 and r.stderr.strip() and "Try 'lmapd --help'" in r.stderr,
          "usage error %s %s %s: exit 2 with a message (got %d %r)"
          % (what, args, env or "", r.returncode, r.stderr[-200:]))


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "flags.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "10", "--force", "--no-progress"],
                   check=True, capture_output=True)
    token = os.path.join(TMP, "flags.token")
    open(token, "w").write("flag-token\n")

    h = subprocess.run([LMAPD, "--help"], capture_output=True, text=True, timeout=30)
    check(h.returncode == 0 and h.stdout.startswith("usage: lmapd"), "--help exits 0 with the usage")
    listed = re.findall(r"^  (--[a-z-]+)", h.stdout, re.M)
    envs = dict(re.findall(r"^  (--[a-z-]+)\s+(?:\S+\s+)?(LMAPD_[A-Z_]+)", h.stdout, re.M))
    check(len(listed) >= 16, "--help lists the flags (%d)" % len(listed))
    for flag in listed:
        check(flag in NUMERIC or flag in OTHER, "flag %s listed in --help is tested here" % flag)
    for flag, (key, _) in NUMERIC.items():
        check(envs.get(flag) == "LMAPD_" + key.upper(), "%s lists LMAPD_%s" % (flag, key.upper()))
    for flag, env in ENV.items():
        check(envs.get(flag) == env, "%s lists %s (got %s)" % (flag, env, envs.get(flag)))
    v = subprocess.run([LMAPD, "--version"], capture_output=True, text=True, timeout=30)
    check(v.returncode == 0 and v.stdout.startswith("lmapd "), "--version exits 0")
    # One version everywhere: lmap --version, and /v1/info's server block.
    version = v.stdout.split()[1]
    lv = subprocess.run([LMAP, "--version"], capture_output=True, text=True, timeout=30)
    check(lv.stdout.split() == ["lmap", version], "lmap --version is lmapd's %s (%r)" % (version, lv.stdout))
    spec = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "openapi.yaml")
    spec_version = re.search(r"^  version: (\S+)$", open(spec).read(), re.M).group(1)
    check(spec_version == version, "docs/openapi.yaml's info.version is %s (%s)" % (version, spec_version))
    p, port, _ = launch([LMAPD, "--store", store, "--listen", "127.0.0.1:0"])
    try:
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/info" % port, timeout=5) as r:
            info = json.loads(r.read())
        check(info["server"] == {"version": version, "api_version": 1} and info["format_version"] == 2,
              "/v1/info: server %s, store format_version %s" % (info["server"], info["format_version"]))
    finally:
        check(stop_daemon(p) == 0, "exit 0 (version daemon)")

    base = [LMAPD, "--store", store, "--listen", "127.0.0.1:0"]
    # Every numeric flag, all at once, then every variable, all at once.
    args = [a for flag, (_, val) in NUMERIC.items() for a in (flag, val)]
    args += ["--token-file", token, "--access-log", "--no-page-check", "--serve-store",
             "--resident", "--no-ui"]
    p, port, log = launch(base + args)
    try:
        cfg = config_of(log)
        for flag, (key, val) in NUMERIC.items():
            check(cfg.get(key) == int(val), "%s %s -> config %s=%s" % (flag, val, key, cfg.get(key)))
        check(cfg["token"] == "<redacted, from file>" and cfg["access_log"] is True
              and cfg["page_check"] is False and cfg["store"] == store
              and cfg["serve_store"] is True and cfg["resident"] is True and cfg["ui"] is False,
              "--token-file, --access-log, --no-page-check, --store, --serve-store, --resident, "
              "--no-ui take effect (%s)" % cfg)
        check(wait_until(lambda: log_events(log, "resident_ready"), 30) and
              log_events(log, "resident_ready")[0]["build_threads"] == 3,
              "--resident builds the arena on --resident-threads threads")
        # --max-per-ip takes effect: it serves (it once printed the usage).
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/livez" % port, timeout=5) as r:
            check(r.status == 200, "serving with every flag set")
        check(any(e.get("path") == "/livez" for e in log_events(log, "request")),
              "--access-log logs a 200")
    finally:
        check(stop_daemon(p) == 0, "exit 0 (flags daemon)")

    env = {"LMAPD_" + key.upper(): val for key, val in (v for v in NUMERIC.values())}
    env.update({"LMAPD_STORE": store, "LMAPD_LISTEN": "127.0.0.1:0", "LMAPD_TOKEN_FILE": token,
                "LMAPD_ACCESS_LOG": "1", "LMAPD_PAGE_CHECK": "0", "LMAPD_SERVE_STORE": "1",
                "LMAPD_RESIDENT": "1", "LMAPD_UI": "0"})
    p, port, log = launch([LMAPD], env=env)
    try:
        cfg = config_of(log)
        for flag, (key, val) in NUMERIC.items():
            check(cfg.get(key) == int(val), "LMAPD_%s=%s -> config %s" % (key.upper(), val, cfg.get(key)))
        check(cfg["token"] == "<redacted, from file>" and cfg["access_log"] is True
              and cfg["page_check"] is False and cfg["store"] == store and cfg["listen"] == "127.0.0.1:0"
              and cfg["serve_store"] is True and cfg["resident"] is True and cfg["ui"] is False,
              "LMAPD_STORE, _LISTEN, _TOKEN_FILE, _ACCESS_LOG, _PAGE_CHECK, _SERVE_STORE, "
              "_RESIDENT, _UI take effect")
    finally:
        check(stop_daemon(p) == 0, "exit 0 (env daemon)")
    # A flag wins over its variable.
    p, port, log = launch(base + ["--threads", "5"], env={"LMAPD_THREADS": "4"})
    try:
        check(config_of(log)["threads"] == 5, "--threads wins over LMAPD_THREADS")
    finally:
        check(stop_daemon(p) == 0, "exit 0 (flag over env daemon)")
    # Text logs.
    for how in (["--log-format", "text"], []):
        envx = {} if how else {"LMAPD_LOG_FORMAT": "text"}
        r = subprocess.Popen(base + how, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, **envx))
        first = r.stderr.readline()
        r.terminate()
        r.wait(timeout=30)
        check(first and not first.startswith("{") and "config" in first,
              "text log format via %s (%r)" % (how or envx, first[:80]))

    # Usage errors: exit 2 with a message, nothing served.
    usage_error(["--store", store, "--no-such-flag"], what="unknown flag")
    usage_error(["--store", store, "extra"], what="extra argument")
    usage_error([], what="missing --store")
    usage_error(["--store", store, "--threads"], what="missing value")
    usage_error(["--store", store, "--log-format", "xml"], what="bad log format")
    usage_error(["--store", store, "--listen", "localhost"], what="bad listen")
    for flag in NUMERIC:
        for bad in ("abc", "-1", "99999999999999999999999", "12x"):
            usage_error(["--store", store, flag, bad], what="bad value")
        env_name = "LMAPD_" + NUMERIC[flag][0].upper()
        usage_error(["--store", store], env={env_name: "abc"}, what="bad variable")
    usage_error(["--store", store, "--threads", "0"], what="below the minimum")
    usage_error(["--store", store, "--max-body", "10"], what="below the minimum")
    # A budget for waiting answers smaller than one answer could never send
    # the largest: refused, naming both flags.
    r = subprocess.run([LMAPD, "--store", store, "--max-answer", "4194304",
                        "--max-answer-memory", "2097152"], capture_output=True, text=True, timeout=30)
    check(r.returncode == 2 and "--max-answer-memory 2097152" in r.stderr
          and "--max-answer 4194304" in r.stderr,
          "--max-answer-memory below --max-answer: exit 2 naming both (%d %r)" % (r.returncode, r.stderr))
    usage_error(["--store", store], env={"LMAPD_MAX_ANSWER_MEMORY": "1048576"},
                what="LMAPD_MAX_ANSWER_MEMORY below the default --max-answer")
    for name in ("LMAPD_ACCESS_LOG", "LMAPD_PAGE_CHECK", "LMAPD_SERVE_STORE"):
        usage_error(["--store", store], env={name: "yes"}, what="bad switch")
    return summary()


if __name__ == "__main__":
    sys.exit(main())
