{{/*
The agent DaemonSets to render: one per (enabled family, pool), as a JSON list
of {family, pool, region, nodeSelector, name}. A family without pools gets one
pool named after it.
*/}}
{{- define "xinhe.agents.pools" -}}
{{- $out := list }}
{{- $fullname := include "xinhe.fullname" . }}
{{- range $family, $spec := .Values.agents.families }}
{{- if $spec.enabled }}
{{- $pools := $spec.pools | default (list (dict "name" $family)) }}
{{- range $pool := $pools }}
{{- $suffix := ternary $family (printf "%s-%s" $family $pool.name) (eq $pool.name $family) }}
{{- $name := printf "%s-agent-%s" $fullname $suffix | trunc 63 | trimSuffix "-" }}
{{- $out = append $out (dict "family" $family "pool" $pool.name
      "region" (default $.Values.agents.region $pool.region)
      "cost" ($pool.costPerDeviceHour | default 0)
      "nodeSelector" (merge (dict) ($pool.nodeSelector | default dict) ($spec.nodeSelector | default dict))
      "name" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Non-empty when any agent (DaemonSet or Kubernetes executor) is rendered. */}}
{{- define "xinhe.agents.any" -}}
{{- if or (include "xinhe.agents.pools" . | fromJsonArray) .Values.agents.kubernetesExecutor.enabled }}true{{ end }}
{{- end }}

{{/* Labels selecting one agent DaemonSet's pods. Args: root, entry. */}}
{{- define "xinhe.agent.selectorLabels" -}}
{{ include "xinhe.selectorLabels" .root }}
app.kubernetes.io/component: agent
xinhe.io/family: {{ .entry.family }}
xinhe.io/pool: {{ .entry.pool }}
{{- end }}

{{/* Environment every agent shares: control-plane address and token. */}}
{{- define "xinhe.agent.commonEnv" -}}
- {name: XINHE_SERVER, value: {{ include "xinhe.serverAddress" . | quote }}}
{{- if .Values.auth.enabled }}
- name: XINHE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "xinhe.authSecretName" . }}
      key: {{ ternary .Values.auth.existingSecretKey "token" (ne .Values.auth.existingSecret "") }}
{{- end }}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: NODE_IP
  valueFrom: {fieldRef: {fieldPath: {{ ternary "status.hostIP" "status.podIP" .Values.agents.hostNetwork }}}}
# Read-only root file system: caches and temporary files go under /tmp.
- {name: HOME, value: /tmp}
{{- with .Values.agents.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
