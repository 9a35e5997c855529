// Reads Kubernetes objects (YAML documents, from `kubectl kustomize`) on
// stdin and validates each against the Kubernetes API schema of its
// apiVersion and kind (npm kubernetes-models, offline). Exits 1 naming every
// object that fails, or whose kind has no schema here.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const kinds = {
  "v1/ConfigMap": ["kubernetes-models/v1", "ConfigMap"],
  "v1/Service": ["kubernetes-models/v1", "Service"],
  "v1/PersistentVolumeClaim": ["kubernetes-models/v1", "PersistentVolumeClaim"],
  "apps/v1/Deployment": ["kubernetes-models/apps/v1", "Deployment"],
  "policy/v1/PodDisruptionBudget": ["kubernetes-models/policy/v1", "PodDisruptionBudget"],
  "autoscaling/v2/HorizontalPodAutoscaler": ["kubernetes-models/autoscaling/v2", "HorizontalPodAutoscaler"],
};

const docs = parseAllDocuments(readFileSync(0, "utf8"));
let bad = 0, seen = [];
for (const doc of docs) {
  if (doc.errors.length) {
    console.error(`not YAML: ${doc.errors[0].message}`);
    bad++;
    continue;
  }
  const obj = doc.toJS();
  if (obj === null) continue;
  const key = `${obj.apiVersion}/${obj.kind}`;
  const name = `${key} ${obj.metadata?.name}`;
  const model = kinds[key];
  if (!model) {
    console.error(`${name}: no schema for this kind here`);
    bad++;
    continue;
  }
  const mod = await import(model[0]);
  try {
    new mod[model[1]](obj).validate();
    seen.push(name);
  } catch (e) {
    console.error(`${name}: ${e.message}`);
    bad++;
  }
}
if (seen.length === 0 && bad === 0) {
  console.error("no objects on stdin");
  process.exit(1);
}
console.log(`validate: ${seen.length} objects valid${bad ? `, ${bad} invalid` : ""}: ${seen.join(", ")}`);
process.exit(bad ? 1 : 0);
