{{/*
Names, labels and the few derived settings every template shares.
*/}}

{{- define "xinhe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or the release name when it already contains the chart name. */}}
{{- define "xinhe.fullname" -}}
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

{{- define "xinhe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "xinhe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "xinhe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xinhe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of the control-plane pods. */}}
{{- define "xinhe.controlPlane.selectorLabels" -}}
{{ include "xinhe.selectorLabels" . }}
app.kubernetes.io/component: control-plane
{{- end }}

{{- define "xinhe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "xinhe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "xinhe.agentServiceAccountName" -}}
{{- printf "%s-agent" (include "xinhe.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* image reference: repository:tag, the tag defaulting to appVersion. */}}
{{- define "xinhe.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Whether the control plane runs several replicas (and so elects a leader). */}}
{{- define "xinhe.ha" -}}
{{- if gt (int .Values.controlPlane.replicas) 1 }}true{{ end }}
{{- end }}

{{/* Replicas elect their leader on a Kubernetes Lease. */}}
{{- define "xinhe.leaseElection" -}}
{{- if and (include "xinhe.ha" .) (eq (default "postgres" .Values.leaderElection.mode) "kubernetes") }}true{{ end }}
{{- end }}

{{/* The leader-election Lease's name. */}}
{{- define "xinhe.leaseName" -}}
{{- default (printf "%s-leader" (include "xinhe.fullname" .) | trunc 63 | trimSuffix "-") .Values.leaderElection.leaseName }}
{{- end }}

{{/* Ray mode in effect: kuberay falls back to embedded without the CRD. */}}
{{- define "xinhe.rayMode" -}}
{{- if and (eq .Values.ray.mode "kuberay") (not (.Capabilities.APIVersions.Has "ray.io/v1/RayCluster")) }}
{{- "embedded" }}
{{- else }}
{{- .Values.ray.mode }}
{{- end }}
{{- end }}

{{- define "xinhe.rayClusterName" -}}
{{- printf "%s-ray" (include "xinhe.fullname" .) | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/* The Ray address the server joins; empty = start Ray in the pod. */}}
{{- define "xinhe.rayAddress" -}}
{{- $mode := include "xinhe.rayMode" . }}
{{- if eq $mode "external" }}
{{- .Values.ray.address }}
{{- else if eq $mode "kuberay" }}
{{- printf "ray://%s-head-svc.%s.svc:10001" (include "xinhe.rayClusterName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "xinhe.authSecretName" -}}
{{- default (printf "%s-auth" (include "xinhe.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "xinhe.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "xinhe.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{- define "xinhe.storeSecretName" -}}
{{- default (printf "%s-store" (include "xinhe.fullname" .)) .Values.storage.postgres.existingSecret }}
{{- end }}

{{/* The control-plane address agents dial. */}}
{{- define "xinhe.serverAddress" -}}
{{- if .Values.agents.serverAddress }}
{{- .Values.agents.serverAddress }}
{{- else }}
{{- printf "%s.%s.svc:%d" (include "xinhe.fullname" .) .Release.Namespace (int .Values.service.grpcPort) }}
{{- end }}
{{- end }}

{{/*
Cross-field rules the JSON schema cannot say clearly; each message names the
values to change.
*/}}
{{- define "xinhe.validate" -}}
{{- if and (include "xinhe.ha" .) (ne .Values.storage.type "postgres") }}
{{- fail "controlPlane.replicas > 1 needs storage.type=postgres: the embedded SQLite store is a single-writer file on one volume" }}
{{- end }}
{{- if and (eq .Values.storage.type "postgres") (not .Values.storage.postgres.dsn) (not .Values.storage.postgres.existingSecret) }}
{{- fail "storage.type=postgres needs storage.postgres.existingSecret (a Secret holding the DSN) or storage.postgres.dsn" }}
{{- end }}
{{- if and (eq .Values.ray.mode "external") (not .Values.ray.address) }}
{{- fail "ray.mode=external needs ray.address (e.g. ray://ray-head.ray:10001)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (or (not .Values.tls.cert) (not .Values.tls.key)) }}
{{- fail "tls.enabled needs tls.existingSecret, or both tls.cert and tls.key" }}
{{- end }}
{{- end }}
