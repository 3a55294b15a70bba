{{/*
The operator's RBAC rules: exactly what `ganops operator run` (kopf) does, nothing more, no
wildcards. Declared in ganops/k8s/rbac.py (tests check the two are equal). One place, used
by the Role of every watched namespace and by the ClusterRole of cluster-wide mode; tests/helm.py reads them back for the operator's tests on a real API server.

Argument: a dict with "clusterWide" (bool). Cluster-wide mode adds the cluster-scoped reads
kopf needs to discover namespaces and CRDs when it watches all of them.
*/}}
{{- define "ganops.operatorRules" -}}
# GANJobs and GANGenerations: watch them, patch them (kopf's progress annotations).
- apiGroups: [ganops.io]
  resources: [ganjobs, gangenerations]
  verbs: [get, list, watch, patch]
# Their status: phase, RayJob name, MLflow run id (merge patches only).
- apiGroups: [ganops.io]
  resources: [ganjobs/status, gangenerations/status]
  verbs: [patch]
# RayJobs owned by them with blockOwnerDeletion (OwnerReferencesPermissionEnforcement asks for this).
- apiGroups: [ganops.io]
  resources: [ganjobs/finalizers, gangenerations/finalizers]
  verbs: [update]
# The RayJob of each GANJob / GANGeneration (KubeRay runs it).
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [get, list, watch, create, patch, delete]
# kopf reports handler outcomes as Events on the objects.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .clusterWide }}
# Cluster-wide mode: kopf discovers namespaces and CRDs.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}
{{- end }}
