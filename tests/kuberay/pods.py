"""The head and worker pods of a RayCluster, built from its templates as KubeRay v1.5 builds them.

Follows (ray-project/kuberay):
  ray-operator/controllers/ray/common/pod.go  DefaultHeadPodTemplate, DefaultWorkerPodTemplate
      (the wait-gcs-ready init container), BuildPod, setMissingRayStartParams,
      generateRayStartCommand, addWellKnownAcceleratorResources (GPUs), convertParamMap,
      labelPod, setInitContainerEnvVars, setContainerEnvVars, initLivenessAndReadinessProbe,
      addEmptyDir (/dev/shm), configureGCSFaultTolerance (the head's ray.io/ft-enabled=false)
  ray-operator/controllers/ray/raycluster_controller.go  buildHeadPod, buildWorkerPod
Simplifies (none of these are used by ganops, and a RayCluster asking for them is refused by
raycluster.py): the autoscaler sidecar, GCS fault tolerance, token auth and TLS env, custom
accelerators (TPU, Neuron cores), top-level group ``resources``/``labels``, multi-host groups,
batch-scheduler metadata and the operator's default container env (empty by default).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tests.kuberay import names as n
from tests.kuberay.quantity import Quantity

_MIG = re.compile(r"nvidia\.com/mig-\d+g\.\d+gb$")
# The wait-gcs-ready script of DefaultWorkerPodTemplate, with the head's FQDN and port.
_WAIT_GCS = """
					SECONDS=0
					while true; do
						if (( SECONDS <= 120 )); then
							if ray health-check --address {addr} > /dev/null 2>&1; then
								echo "GCS is ready."
								break
							fi
							echo "$SECONDS seconds elapsed: Waiting for GCS to be ready."
						else
							if ray health-check --address {addr}; then
								echo "GCS is ready. Any error messages above can be safely ignored."
								break
							fi
							echo "$SECONDS seconds elapsed: Still waiting for GCS to be ready. For troubleshooting, refer to the FAQ at https://docs.ray.io/en/master/cluster/kubernetes/troubleshooting.html."
						fi
						sleep 5
					done
				"""


def head_port(head_params: dict[str, str]) -> str:
    """GetHeadPort: the GCS port that workers and drivers dial."""
    return head_params.get("port") or str(n.DEFAULT_GCS_PORT)


def is_gpu_key(key: str) -> bool:
    return key.endswith("gpu") or _MIG.search(key) is not None


def _missing_params(params: dict[str, str], node_type: str, port: str, fqdn: str) -> dict[str, str]:
    """setMissingRayStartParams."""
    params = dict(params)
    if node_type == n.WORKER:
        params.setdefault("address", f"{fqdn}:{port}")
    else:
        # The dashboard must listen beyond localhost for the submitter and the operator.
        params.setdefault("dashboard-host", "0.0.0.0")
    params.setdefault("metrics-export-port", str(n.DEFAULT_METRICS_PORT))
    params["block"] = "true"  # the container lives as long as `ray start` does
    params.setdefault("dashboard-agent-listen-port", str(n.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT))
    return params


def _param_string(params: dict[str, str]) -> str:
    """convertParamMap: sorted flags; "true"/"false" are switches (except two tri-state ones)."""
    out = ""
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in ("log-color", "include-dashboard"):
            if value.lower() == "true":
                out += f" --{key} "
        else:
            out += f" --{key}={value} "
    return out


def ray_start_command(node_type: str, params: dict[str, str], resources: dict[str, Any]) -> str:
    """generateRayStartCommand: num-cpus, memory and num-gpus from the container's resources."""
    params = dict(params)
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if "num-cpus" not in params:
        for source in (limits, requests):  # the limit, else the request
            if source.get("cpu") and not Quantity.parse(source["cpu"]).is_zero():
                params["num-cpus"] = str(Quantity.parse(source["cpu"]).whole())
                break
    if "memory" not in params and limits.get("memory") and not Quantity.parse(limits["memory"]).is_zero():
        params["memory"] = str(Quantity.parse(limits["memory"]).whole())
    for key in sorted(limits):
        if "num-gpus" not in params and is_gpu_key(key) and not Quantity.parse(limits[key]).is_zero():
            params["num-gpus"] = str(Quantity.parse(limits[key]).whole())
    head = "--head " if node_type == n.HEAD else ""
    return f"ray start {head}{_param_string(params)}"


def _labels(node_type: str, cluster: str, group: str, template_labels: dict[str, str]) -> dict[str, str]:
    """labelPod: KubeRay's labels; the template's may not override cluster, node type or group."""
    labels = {
        n.IS_RAY_NODE_LABEL: "yes",
        n.CLUSTER_LABEL: cluster,
        n.NODE_TYPE_LABEL: node_type,
        n.GROUP_LABEL: group,
        n.IDENTIFIER_LABEL: n.identifier(cluster, node_type),
        n.APP_NAME_LABEL: n.APPLICATION_NAME,
        n.CREATED_BY_LABEL: n.COMPONENT_NAME,
    }
    for k, v in (template_labels or {}).items():
        if k not in (n.NODE_TYPE_LABEL, n.GROUP_LABEL, n.CLUSTER_LABEL):
            labels[k] = v
    return labels


def _add_metrics_port(container: dict[str, Any]) -> None:
    if not any(p.get("name") == n.METRICS_PORT_NAME for p in container.get("ports") or []):
        container["ports"] = [*(container.get("ports") or []),
                              {"name": n.METRICS_PORT_NAME, "containerPort": n.DEFAULT_METRICS_PORT}]  # fmt: skip


def _has(env: list[dict[str, Any]], name: str) -> bool:
    return any(e.get("name") == name for e in env)


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _container_env(container: dict[str, Any], node_type: str, fqdn: str, port: str, start_cmd: str,
                   creator: str) -> None:  # fmt: skip
    """setContainerEnvVars; ``creator`` is the kind of the cluster's origin (RayJob, or RayCluster itself)."""
    env = list(container.get("env") or [])
    ip = n.LOCAL_HOST
    if node_type == n.WORKER:
        ip = fqdn
        env += [{"name": "FQ_RAY_IP", "value": fqdn}, {"name": "RAY_IP", "value": fqdn.split(".")[0]}]
    env += [
        _field_env("RAY_CLUSTER_NAME", f"metadata.labels['{n.CLUSTER_LABEL}']"),
        _field_env("RAY_CLOUD_INSTANCE_ID", "metadata.name"),
        _field_env("RAY_NODE_TYPE_NAME", f"metadata.labels['{n.GROUP_LABEL}']"),
        {"name": "KUBERAY_GEN_RAY_START_CMD", "value": start_cmd},
    ]
    if not _has(env, "RAY_PORT"):
        env.append({"name": "RAY_PORT", "value": port})
    if not _has(env, "RAY_ADDRESS"):
        env.append({"name": "RAY_ADDRESS", "value": f"{ip}:{port}"})
    if not _has(env, "RAY_USAGE_STATS_KUBERAY_IN_USE"):
        env.append({"name": "RAY_USAGE_STATS_KUBERAY_IN_USE", "value": "1"})
    if node_type == n.HEAD:
        env.append(
            {
                "name": "RAY_USAGE_STATS_EXTRA_TAGS",
                "value": f"kuberay_version={n.KUBERAY_VERSION};kuberay_crd={creator}",
            }
        )
    if not _has(env, "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE"):
        env.append({"name": "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "value": "1"})
    container["env"] = env


def _probes(container: dict[str, Any], node_type: str, params: dict[str, str]) -> None:
    """initLivenessAndReadinessProbe (v1.5: exec probes running wget)."""
    agent_port = int(params.get("dashboard-agent-listen-port", n.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT))
    dashboard_port = int(params.get("dashboard-port", n.DEFAULT_DASHBOARD_PORT))
    commands = [n.WGET_HEALTH_COMMAND.format(timeout=n.READINESS["timeoutSeconds"], port=agent_port,
                                             path=n.RAYLET_HEALTH_PATH)]  # fmt: skip
    if node_type == n.HEAD:
        commands.append(n.WGET_HEALTH_COMMAND.format(timeout=n.READINESS["failureThreshold"], port=dashboard_port,
                                                     path=n.GCS_HEALTH_PATH))  # fmt: skip
    action = {"exec": {"command": ["bash", "-c", " && ".join(commands)]}}
    for key, settings in (("livenessProbe", n.LIVENESS), ("readinessProbe", n.READINESS)):
        if container.get(key) is None:
            timeout = n.HEAD_PROBE_TIMEOUT_SECONDS if node_type == n.HEAD else settings["timeoutSeconds"]
            container[key] = {**settings, "timeoutSeconds": timeout, **action}


def _add_shm(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    """addEmptyDir: Ray's object store needs a /dev/shm bigger than the container default."""
    if any(m.get("mountPath") == "/dev/shm" for m in container.get("volumeMounts") or []):
        return
    if not any(v.get("name") == "shared-mem" for v in pod_spec.get("volumes") or []):
        limits, requests = (container.get("resources") or {}).get("limits") or {}, \
            (container.get("resources") or {}).get("requests") or {}  # fmt: skip
        empty_dir: dict[str, Any] = {"medium": "Memory"}
        if limits.get("memory") or requests.get("memory"):
            empty_dir["sizeLimit"] = limits.get("memory") or requests.get("memory")
        pod_spec["volumes"] = [*(pod_spec.get("volumes") or []), {"name": "shared-mem", "emptyDir": empty_dir}]
    container["volumeMounts"] = [*(container.get("volumeMounts") or []),
                                 {"name": "shared-mem", "mountPath": "/dev/shm"}]  # fmt: skip


def _cmd_string(words: list[str]) -> str:
    """convertCmdToString."""
    return "".join(f" {w} " for w in words)


def _build(template: dict[str, Any], node_type: str, params: dict[str, str], port: str, fqdn: str,
           owner: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """BuildPod: the container command, env and probes, and the owner reference."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]}
    spec = pod["spec"]
    container = spec["containers"][n.RAY_CONTAINER]
    _add_shm(spec, container)
    cmd = _cmd_string(container.get("command") or []) + _cmd_string(container.get("args") or [])
    start_cmd = ray_start_command(node_type, params, container.get("resources") or {})
    overwrite = (pod["metadata"].get("annotations") or {}).get(n.OVERWRITE_CMD_ANNOTATION, "").lower() == "true"
    if not overwrite and "ray start" not in cmd:
        generated = f"ulimit -n 65536; {start_cmd}"
        container["command"] = n.container_command()
        # With --block, nothing after `ray start` would run: the user's command goes first.
        container["args"] = [f"{cmd} && {generated}" if cmd else generated]
    for init in spec.get("initContainers") or []:
        init["env"] = [*(init.get("env") or []), {"name": "FQ_RAY_IP", "value": fqdn},
                       {"name": "RAY_IP", "value": fqdn.split(".")[0]}]  # fmt: skip
    creator = (owner["metadata"].get("labels") or {}).get(n.ORIGINATED_FROM_CRD)
    _container_env(
        container, node_type, fqdn, port, start_cmd, creator if creator in ("RayJob", "RayService") else "RayCluster"
    )
    if not n.env_false(n.ENV_PROBES_INJECTION):
        _probes(container, node_type, params)
    pod["metadata"]["ownerReferences"] = [n.controller_ref(owner)]
    return pod


def build_head_pod(cluster: dict[str, Any], template: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """buildHeadPod + DefaultHeadPodTemplate."""
    name, ns = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    template = copy.deepcopy(template)
    meta = template.setdefault("metadata", {})
    meta.pop("name", None)
    meta["generateName"] = n.pod_generate_name(name, n.HEAD)
    meta["namespace"] = ns  # pods stay in the RayCluster's namespace
    meta["labels"] = _labels(n.HEAD, name, n.HEAD_GROUP, meta.get("labels") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), n.FT_ENABLED_ANNOTATION: "false"}
    port = head_port(params)
    params = _missing_params(params, n.HEAD, port, "")
    _add_metrics_port(template["spec"]["containers"][n.RAY_CONTAINER])
    return _build(template, n.HEAD, params, port, n.fqdn_head_service(name, ns), cluster)


def build_worker_pod(cluster: dict[str, Any], group: str, template: dict[str, Any], params: dict[str, str],
                     head_params: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """buildWorkerPod + DefaultWorkerPodTemplate."""
    name, ns = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    template = copy.deepcopy(template)
    fqdn, port = n.fqdn_head_service(name, ns), head_port(head_params)
    spec = template["spec"]
    ray = spec["containers"][n.RAY_CONTAINER]
    if not n.env_false(n.ENV_INIT_CONTAINER_INJECTION):
        # The worker's raylet would fail to register before the head's GCS answers.
        init: dict[str, Any] = {
            "name": "wait-gcs-ready",
            "image": ray["image"],
            "command": n.container_command(),
            "args": [_WAIT_GCS.format(addr=f"{fqdn}:{port}")],
            "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}, "requests": {"cpu": "200m", "memory": "256Mi"}},
        }
        for key in ("imagePullPolicy", "securityContext", "env", "volumeMounts"):
            if ray.get(key):
                init[key] = copy.deepcopy(ray[key])
        spec["initContainers"] = [*(spec.get("initContainers") or []), init]
    meta = template.setdefault("metadata", {})
    meta.pop("name", None)  # several replicas: generateName only
    meta["generateName"] = n.pod_generate_name(f"{name}-{group}", n.WORKER)
    meta["namespace"] = ns
    meta["labels"] = _labels(n.WORKER, name, group, meta.get("labels") or {})
    params = _missing_params(params, n.WORKER, port, fqdn)
    _add_metrics_port(ray)
    return _build(template, n.WORKER, params, port, fqdn, cluster)


def is_running_and_ready(pod: dict[str, Any]) -> bool:
    """utils.IsRunningAndReady."""
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def should_delete(pod: dict[str, Any]) -> str | None:
    """shouldDeletePod: why KubeRay deletes this pod (a terminal pod, or a dead Ray container
    that will never restart), or None."""
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        return f"pod phase {phase} is terminal"
    ray_name = spec["containers"][n.RAY_CONTAINER]["name"]
    terminated = next(
        (
            (s.get("state") or {}).get("terminated")
            for s in status.get("containerStatuses") or []
            if s.get("name") == ray_name
        ),
        None,
    )
    if phase == "Running" and terminated and spec.get("restartPolicy") == "Never":
        return "the Ray container terminated and restartPolicy is Never"
    return None
