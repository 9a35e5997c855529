#!/usr/bin/python3
"""What the Kubernetes objects of deploy/k8s promise, read from `kubectl
kustomize` output on stdin (the schemas themselves: validate.mjs):
the probes are lmapd's /readyz and /livez, the pods run non-root on a
read-only root with no capabilities, the grace period covers preStop plus
lmapd's drain, rollouts never take a replica away before its successor is
ready, the Service, PDB and HPA point at the Deployment's pods, and the
store comes from an init container's `lmap pull` (base) or a ReadOnlyMany
volume (overlay). Usage: check_k8s.py base|shared-volume < rendered.yaml"""
import sys

import yaml

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def main():
    variant = sys.argv[1]
    objs = {o["kind"]: o for o in yaml.safe_load_all(sys.stdin) if o}
    dep = objs["Deployment"]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = {x["name"]: x for x in spec["containers"]}["lmapd"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")
    check(c["livenessProbe"]["httpGet"]["path"] == "/livez", "liveness on /livez")
    check(c["startupProbe"]["httpGet"]["path"] == "/readyz", "startup on /readyz")
    sec = spec["securityContext"]
    check(sec["runAsNonRoot"] and sec["runAsUser"] == 10001, "non-root, the image's uid")
    for x in spec["containers"] + spec.get("initContainers", []):
        s = x["securityContext"]
        check(s["readOnlyRootFilesystem"] and not s["allowPrivilegeEscalation"]
              and s["capabilities"]["drop"] == ["ALL"], "%s: read-only root, no caps" % x["name"])
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    check(pre[0] == "sleep", "preStop waits for the endpoints to drop the pod")
    check(spec["terminationGracePeriodSeconds"] >= int(pre[1]) + int(env["LMAPD_GRACE"]) + 1,
          "grace %s covers preStop %s + drain %s" % (spec["terminationGracePeriodSeconds"],
                                                      pre[1], env["LMAPD_GRACE"]))
    check(dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "maxUnavailable 0")
    labels = pod["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        sel = objs[kind]["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        check(sel and all(labels.get(k) == v for k, v in sel.items()), "%s selects the pods" % kind)
    check(objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] ==
          dep["metadata"]["name"], "HPA scales the Deployment")
    mount = {m["name"]: m for m in c["volumeMounts"]}["stores"]
    check(env["LMAPD_STORE"].startswith(mount["mountPath"] + "/") and mount["readOnly"],
          "lmapd reads the store from its read-only mount")
    vol = {v["name"]: v for v in spec["volumes"]}["stores"]
    if variant == "base":
        init = spec["initContainers"][0]
        check(init["command"][:2] == ["lmap", "pull"] and env["LMAPD_STORE"] in init["command"],
              "the init container pulls the store lmapd serves")
        check("emptyDir" in vol, "each pod its own copy")
        cm = init["envFrom"][0]["configMapRef"]["name"]
        check(cm == objs["ConfigMap"]["metadata"]["name"], "the URL's ConfigMap, hashed name")
    else:
        check("initContainers" not in spec, "no pull with a shared volume")
        pvc = objs["PersistentVolumeClaim"]
        check(vol["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
              and pvc["spec"]["accessModes"] == ["ReadOnlyMany"], "a ReadOnlyMany claim")
    print("check_k8s %s: %d failed" % (variant, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
