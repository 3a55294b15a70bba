{{/*
Names. Kubernetes object names that become DNS labels (Services, and the Pod hostnames derived
from Deployments) must fit in 63 characters, so every name is truncated to 63 and loses a
trailing "-" the cut may leave.
*/}}
{{- define "ganops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ganops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>", the suffix kept whole and the prefix cut to fit 63 characters. */}}
{{- define "ganops.componentName" -}}
{{- $root := index . 0 }}{{- $suffix := index . 1 }}
{{- $max := sub 62 (len $suffix) | int }}
{{- printf "%s-%s" (include "ganops.fullname" $root | trunc $max | trimSuffix "-") $suffix }}
{{- end }}

{{/*
Cluster-scoped objects (ClusterRoles, ClusterRoleBindings) are shared by every release of the
chart, so their names carry the release namespace as well: two releases named "ganops" in two
namespaces must not fight over one ClusterRole. No 63-character limit applies to them.
*/}}
{{- define "ganops.clusterName" -}}
{{- $root := index . 0 }}{{- $suffix := index . 1 }}
{{- printf "%s-%s-%s" (include "ganops.fullname" $root) $root.Release.Namespace $suffix }}
{{- end }}

{{- define "ganops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ganops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ganops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ganops.labels" -}}
helm.sh/chart: {{ include "ganops.chart" . }}
{{ include "ganops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ganops
{{- end }}

{{/* Labels of one component: ("operator" | "mlflow" | "minio"); selectors use componentSelector. */}}
{{- define "ganops.componentLabels" -}}
{{ include "ganops.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "ganops.componentSelector" -}}
{{ include "ganops.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "ganops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ganops.componentName" (list . "operator")) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ganops.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespaces the operator watches in namespaced mode (a list; the release namespace by default). */}}
{{- define "ganops.watchNamespaces" -}}
{{- $ns := .Values.watchNamespaces | default (list .Release.Namespace) | uniq }}
{{- toJson $ns }}
{{- end }}

{{/* Namespaces that need the credentials Secret: the release namespace and every watched one. */}}
{{- define "ganops.secretNamespaces" -}}
{{- $ns := list .Release.Namespace }}
{{- if not .Values.rbac.clusterWide }}
{{- $ns = concat $ns (include "ganops.watchNamespaces" . | fromJsonArray) }}
{{- end }}
{{- toJson ($ns | uniq) }}
{{- end }}

{{/*
Security contexts of the bundled MinIO and MLflow (third-party images, any non-root uid works):
the restricted Pod Security Standard, a read-only root, writable volumes only.
*/}}
{{- define "ganops.bundledPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ganops.bundledSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end }}

{{- define "ganops.mlflowServiceName" -}}
{{- include "ganops.componentName" (list . "mlflow") }}
{{- end }}

{{- define "ganops.minioServiceName" -}}
{{- include "ganops.componentName" (list . "minio") }}
{{- end }}

{{/* MLFLOW_TRACKING_URI: the explicit one, else the bundled server's in-cluster address. */}}
{{- define "ganops.mlflowTrackingUri" -}}
{{- if .Values.mlflow.trackingUri }}
{{- .Values.mlflow.trackingUri }}
{{- else if .Values.mlflow.enabled }}
{{- printf "http://%s.%s.svc:%v" (include "ganops.mlflowServiceName" .) .Release.Namespace .Values.mlflow.port }}
{{- end }}
{{- end }}

{{- define "ganops.minioEndpoint" -}}
{{- printf "http://%s.%s.svc:9000" (include "ganops.minioServiceName" .) .Release.Namespace }}
{{- end }}

{{/* AWS_ENDPOINT_URL: the explicit one, else the bundled MinIO's in-cluster address. */}}
{{- define "ganops.s3Endpoint" -}}
{{- if .Values.s3.endpoint }}
{{- .Values.s3.endpoint }}
{{- else if .Values.minio.enabled }}
{{- include "ganops.minioEndpoint" . }}
{{- end }}
{{- end }}

{{/* AWS_DEFAULT_REGION: the explicit one, else us-east-1 for the bundled MinIO. */}}
{{- define "ganops.s3Region" -}}
{{- if .Values.s3.region }}
{{- .Values.s3.region }}
{{- else if .Values.minio.enabled }}
{{- "us-east-1" }}
{{- end }}
{{- end }}

{{/*
Checks of combinations that no schema can express; rendered (as nothing) by the Deployment so
that a bad combination fails `helm install` with a message naming the values.
*/}}
{{- define "ganops.validate" -}}
{{- if and .Values.credentials.generate (not .Values.minio.enabled) }}
{{- fail "credentials.generate: generates S3 keys for the bundled MinIO only (minio.enabled); for another S3 store create the Secret yourself (see the README)" }}
{{- end }}
{{- if and .Values.credentials.generate (not .Values.credentials.secretName) }}
{{- fail "credentials.generate: needs credentials.secretName (the name of the Secret to generate)" }}
{{- end }}
{{- if and .Values.minio.enabled (not .Values.credentials.secretName) }}
{{- fail "minio.enabled: the bundled MinIO takes its root user from the credentials.secretName Secret; set credentials.secretName" }}
{{- end }}
{{- end }}
