"""Kubernetes: the GANJob / GANGeneration CRDs, the RayJob renderer and the kopf operator."""

GROUP = "ganops.io"
VERSION = "v1alpha1"
# kind -> plural of the custom resources ganops defines: the one list the CLI, the
# operator and its RBAC agree on.
PLURALS = {"GANJob": "ganjobs", "GANGeneration": "gangenerations"}
# Labels on everything the operator creates: what selects the RayJobs it mirrors.
MANAGED_BY = {"app.kubernetes.io/managed-by": "ganops"}
JOB_LABEL = "ganops.io/job"
KIND_LABEL = "ganops.io/kind"
# The annotation `ganops cancel` sets; the operator suspends the RayJob in answer.
CANCEL_ANNOTATION = "ganops.io/cancel-requested"
# The annotation `ganops submit --restart` sets: the driver starts over (old run archived).
RESTART_ANNOTATION = "ganops.io/restart"
