"""What the operator does to the API, as RBAC rules: the one list the Helm chart's Role
must equal (tests/test_helm.py) and that the operator is tested under on a real API server
(tests/test_operator.py), so a missing right fails one test and an extra right the other."""

from __future__ import annotations

from ganops.k8s import PLURALS

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)

_KINDS = tuple(PLURALS.values())

NAMESPACED: frozenset[Rule] = frozenset({
    # kopf lists and watches the jobs, and patches its bookkeeping annotations onto them;
    # the RayJob mirror reads the owner before writing its status.
    *{("ganops.io", k, v) for k in _KINDS for v in ("get", "list", "watch", "patch")},
    # Status is written with merge patches only.
    *{("ganops.io", f"{k}/status", "patch") for k in _KINDS},
    # A RayJob owned with blockOwnerDeletion needs this where OwnerReferencesPermissionEnforcement
    # is on (OpenShift, many hardened clusters; the test API server too).
    *{("ganops.io", f"{k}/finalizers", "update") for k in _KINDS},
    # create (submit), get (a 409's owner), list/watch (status mirror), patch (cancel =
    # suspend), delete (a stale RayJob of an earlier job of the same name; a deleted job's own).
    *{("ray.io", "rayjobs", v) for v in ("get", "list", "watch", "create", "patch", "delete")},
    # kopf posts an Event per handler outcome onto the job, for `kubectl describe`.
    ("", "events", "create"),
})  # fmt: skip

# Watching every namespace: kopf discovers namespaces and CRDs as they come and go.
CLUSTER_WIDE: frozenset[Rule] = NAMESPACED | {
    ("", "namespaces", "list"), ("", "namespaces", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}  # fmt: skip
