"""The ganops Helm chart, rendered the way `helm install` would, for tests.

A plain module (no fixtures) shared by the chart's tests and the operator's: the operator
tests apply exactly the chart's RBAC to the test API server and run the operator under it.
Needs only PyYAML and the ``helm-python-sdk`` wheel (Helm v4 as a library: no helm binary).

    docs = helm.render({"watchNamespaces": ["team-a"]}, namespace="ganops")
    kube_api.apply(helm.rbac_docs(docs))
    helm.operator_rules(docs)       # the rules the operator works under
    helm.operator_container(docs)   # its command, args and env

What ``render`` returns: every object the release would create, in Helm's install order:
the CRDs of ``crds/`` first (kind ``CustomResourceDefinition``; Helm installs them before
anything else and never templates them), then the templates' objects by kind, then hook
objects (annotation ``helm.sh/hook``; see ``is_hook``). NOTES.txt is not an object: ``notes``.
The chart has no dependencies (KubeRay is installed with its own chart: the chart README).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "ganops"
CRDS = CHART / "crds"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
"""The chart's example values files (chart-testing's ci/ convention), each one install."""

OPERATOR = "operator"  # app.kubernetes.io/component of the operator's objects
HOOK = "helm.sh/hook"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")

# Helm's install order (pkg/release/util/kind_sorter.go), the kinds this chart can create.
_INSTALL_ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodDisruptionBudget",
    "ServiceAccount", "Secret", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
    "Role", "RoleBinding", "Service", "DaemonSet", "Pod", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "Ingress",
]  # fmt: skip


def _load(docs_text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(docs_text) if d]


def _rendered(values: dict[str, Any] | None, release: str, namespace: str, chart: Path) -> dict[str, str]:
    import helm_python

    with helm_python.Chart.load(chart) as ch:
        return ch.render(values or {}, name=release, namespace=namespace, is_install=True)


def crds(chart: Path = CHART) -> list[dict[str, Any]]:
    """The chart's CRDs (``crds/*.yaml``), as Helm installs them; [] until they are generated."""
    out: list[dict[str, Any]] = []
    for path in sorted((chart / "crds").glob("*.y*ml")):
        out.extend(_load(path.read_text()))
    return out


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = "ganops",
    namespace: str = "ganops",
    include_crds: bool = True,
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """Every object of ``helm install RELEASE CHART -n NAMESPACE`` with ``values`` (merged
    over values.yaml), CRDs first and hooks last (see the module docstring)."""
    rendered = _rendered(values, release, namespace, chart)
    docs = [d for name, text in sorted(rendered.items()) if not name.endswith("NOTES.txt") for d in _load(text)]
    order = {kind: i for i, kind in enumerate(_INSTALL_ORDER)}
    docs.sort(key=lambda d: (is_hook(d), order.get(d["kind"], len(order))))  # stable: file order within a kind
    return (crds(chart) if include_crds else []) + docs


def lint(chart: Path, values: dict[str, Any] | None = None, *, kube_version: str = "v1.33.0") -> list[str]:
    """What ``helm lint --strict CHART -n ganops`` complains about ([] when clean): warnings
    and errors (strict fails on both), not the informational messages."""
    import helm_python

    report = helm_python.lint(chart, values or {}, strict=True, namespace="ganops", kube_version=kube_version)
    return sorted({m["error"] for m in report["messages"] if m["severity"] >= 2} | set(report["errors"]))


def install_dry_run(chart: Path, values: dict[str, Any] | None = None, *, release: str = "ganops",
                    namespace: str = "ganops") -> list[dict[str, Any]]:  # fmt: skip
    """The objects of ``helm install RELEASE CHART --dry-run`` (no cluster is contacted), hooks
    and CRDs left out. Unlike ``render`` this loads the chart by path as the helm CLI does, and
    so also fails where ``helm install`` does, e.g. on a dependency missing from ``charts/``."""
    import helm_python

    with helm_python.Config(namespace=namespace) as cfg:
        rel = cfg.install(chart, release, values or {}, namespace=namespace, dry_run="client")
    return _load(rel["manifest"])


def render_file(values_file: Path, **kw: Any) -> list[dict[str, Any]]:
    """``render`` with a values file (``helm install -f FILE``)."""
    return render(yaml.safe_load(values_file.read_text()) or {}, **kw)


def notes(values: dict[str, Any] | None = None, *, release: str = "ganops", namespace: str = "ganops") -> str:
    """The NOTES.txt Helm prints after ``helm install``."""
    rendered = _rendered(values, release, namespace, CHART)
    return next(text for name, text in rendered.items() if name.endswith("NOTES.txt"))


def is_hook(doc: dict[str, Any]) -> bool:
    """A Helm hook (created after the release's other objects, e.g. the MinIO bucket Job)."""
    return HOOK in (doc.get("metadata", {}).get("annotations") or {})


def is_crd(doc: dict[str, Any]) -> bool:
    return doc["kind"] == "CustomResourceDefinition"


def find(
    docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
) -> list[dict[str, Any]]:
    """The objects of ``kind`` (and ``name`` / ``namespace`` when given)."""
    return [
        d for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]  # fmt: skip


def _component(doc: dict[str, Any]) -> str | None:
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def rbac_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's ServiceAccount, Role(s)/RoleBinding(s) or ClusterRole/ClusterRoleBinding:
    what to apply to an API server to give a ServiceAccount exactly the operator's rights."""
    return [d for d in docs if d["kind"] in RBAC_KINDS and _component(d) == OPERATOR]


def operator_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's RBAC rules (one list: every watched namespace's Role has the same rules,
    and cluster-wide mode has one ClusterRole). Each rule is ``{apiGroups, resources, verbs}``."""
    roles = [d for d in rbac_docs(docs) if d["kind"] in ("Role", "ClusterRole")]
    if not roles:
        raise ValueError("no operator Role or ClusterRole rendered (rbac.create is off?)")
    rules = [r["rules"] for r in roles]
    if any(r != rules[0] for r in rules):
        raise ValueError("the operator's Roles differ between namespaces")
    return rules[0]


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Rules flattened to (apiGroup, resource, verb) triples, to compare rule lists exactly."""
    return {
        (group, resource, verb)
        for rule in rules for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", []) for verb in rule.get("verbs", [])
    }  # fmt: skip


def operator_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and _component(d) == OPERATOR]
    return dep


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's container: ``command``, ``args``, ``env`` (list of EnvVar), ``envFrom``..."""
    (container,) = operator_deployment(docs)["spec"]["template"]["spec"]["containers"]
    return container


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The operator's plain environment (name -> value; valueFrom entries left out)."""
    return {e["name"]: e["value"] for e in operator_container(docs).get("env", []) if "value" in e}


def namespaces_of(docs: list[dict[str, Any]]) -> list[str]:
    """Namespaces the objects live in (they must exist before an install)."""
    return sorted({d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")})


@contextlib.contextmanager
def applied(kube_api: Any, docs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Create ``docs`` for real on ``kube_api`` (tests.kube.KubeAPI, as admin), and delete them
    again afterwards, so that no test leaves rights behind for the next (RBAC is cluster state)."""
    from kubernetes import dynamic

    kube_api.apply(docs)
    try:
        yield docs
    finally:
        dyn = dynamic.DynamicClient(kube_api.api_client())
        for doc in reversed(docs):
            res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            ns = doc["metadata"].get("namespace") if res.namespaced else None
            with contextlib.suppress(Exception):  # already gone is fine
                res.delete(name=doc["metadata"]["name"], namespace=ns)


# --- what an identity may do on a test API server (SelfSubject*Review), for RBAC tests -------

# Every authenticated identity may ask these about itself (the built-in system:basic-user role).
_SELF_REVIEWS = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
}


def can(kube_api: Any, token: str, verb: str, resource: str, namespace: str | None = None, group: str = "") -> bool:
    """Whether the identity of ``token`` may ``verb`` the ``resource`` (``ganjobs/status`` names
    a subresource) in ``namespace`` (None: cluster-wide), as the API server's authorizer says."""
    from kubernetes import client

    name, _, sub = resource.partition("/")
    attrs = client.V1ResourceAttributes(
        group=group, resource=name, subresource=sub or None, verb=verb, namespace=namespace
    )
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
    out = client.AuthorizationV1Api(kube_api.api_client(token)).create_self_subject_access_review(review)
    return bool(out.status.allowed)


def granted_rules(kube_api: Any, token: str, namespace: str) -> set[tuple[str, str, str]]:
    """Everything the identity of ``token`` may do in ``namespace`` (its RoleBindings there and
    its ClusterRoleBindings), as (apiGroup, resource, verb) triples, less the self-reviews every
    identity has."""
    from kubernetes import client

    review = client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace))
    out = client.AuthorizationV1Api(kube_api.api_client(token)).create_self_subject_rules_review(review)
    rules = [
        {"apiGroups": r.api_groups or [], "resources": r.resources or [], "verbs": r.verbs}
        for r in out.status.resource_rules
    ]
    return {t for t in rule_set(rules) if (t[0], t[1]) not in _SELF_REVIEWS}
