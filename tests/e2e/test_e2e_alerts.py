#!/usr/bin/python3
"""The example Prometheus alert rules (deploy/prometheus/lmap-alerts.yaml)
against a real lmapd: the file is valid rules YAML (every rule an alert with
an expression, a severity and a summary), and every lmap_* series an
expression uses is one lmapd's /metrics exports, so a renamed series cannot
leave the alerts silently watching nothing."""
import os
import re
import subprocess
import sys
import urllib.request

import yaml

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "alerts.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "10", "--force", "--no-progress"],
                   check=True, capture_output=True)
    p, port, _ = start_daemon(store)
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            exported = set(re.findall(r"^# TYPE (lmap_[a-z_]+) ", r.read().decode(), re.M))
    finally:
        stop_daemon(p)
    check(len(exported) >= 10, "lmapd exports its series (%d)" % len(exported))
    doc = yaml.safe_load(open(os.path.join(ROOT, "deploy", "prometheus", "lmap-alerts.yaml")))
    rules = [r for g in doc["groups"] for r in g["rules"]]
    check(len(rules) >= 5, "rules: %d" % len(rules))
    for r in rules:
        check(set(r) >= {"alert", "expr", "labels", "annotations"} and
              r["labels"].get("severity") and r["annotations"].get("summary"),
              "rule %s is complete" % r.get("alert"))
        for name in re.findall(r"\b(lmap_[a-z_]+)", r["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            check(base in exported, "%s: %s is a series lmapd exports" % (r["alert"], name))
    return summary()


if __name__ == "__main__":
    sys.exit(main())
