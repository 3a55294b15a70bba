"""A KubeRay stand-in for tests: the part of KubeRay v1.5's RayJob and RayCluster controllers
that ganops relies on, in Python, following KubeRay's Go source (ray-project/kuberay,
ray-operator/controllers/ray/). Every module names the files it follows and what it leaves out.

    python -m tests.kuberay [--kubeconfig PATH] [--namespace NS] [--dashboard-token-file F]

Modules, one job each:
  names.py       names, labels, constants (utils/constant.go, utils/util.go)
  fields.py      every RayJob/RayCluster field read or written (checked against the real CRDs)
  quantity.py    resource quantity arithmetic (k8s.io/apimachinery resource.Quantity)
  pods.py        head and worker pods (common/pod.go)
  service.py     the head Service (common/service.go)
  submitter.py   the submitter Job (common/job.go)
  dashboard.py   the Ray Jobs REST API (utils/dashboardclient/dashboard_httpclient.go)
  raycluster.py  the RayCluster controller (raycluster_controller.go)
  rayjob.py      the RayJob controller (rayjob_controller.go)
  controller.py  the polling loop; api.py the Kubernetes calls; crds.py permissive CRDs;
  log.py         one line per action
The real KubeRay cannot be built where these tests run; an end-to-end test on a real cluster
checks what this stand-in cannot (pods that really run).
"""
