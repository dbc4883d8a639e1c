{{/* Chart name. */}}
{{- define "loom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the RayService's name and the prefix of every object. KubeRay
derives <fullname>-head-svc and <fullname>-serve-svc from it, so keep it short (<= 40). */}}
{{- define "loom.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "loom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "loom.labels" -}}
helm.sh/chart: {{ include "loom.chart" . }}
{{ include "loom.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "loom.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* ---- Redis ---------------------------------------------------------------------------- */}}

{{/* "external", "internal" or "" (no Redis). */}}
{{- define "loom.redis.mode" -}}
{{- if .Values.redis.external.url }}external{{ else if .Values.redis.enabled }}internal{{ end }}
{{- end }}

{{- define "loom.redis.fullname" -}}
{{- printf "%s-redis" (include "loom.fullname" .) }}
{{- end }}

{{/* Does Redis take a password? Always for the chart's Redis; for an external one when a
Secret or a password is given. */}}
{{- define "loom.redis.auth" -}}
{{- $mode := include "loom.redis.mode" . }}
{{- if or (eq $mode "internal") .Values.redis.auth.existingSecret .Values.redis.auth.password }}true{{ end }}
{{- end }}

{{- define "loom.redis.secretName" -}}
{{- .Values.redis.auth.existingSecret | default (include "loom.redis.fullname" .) }}
{{- end }}

{{- define "loom.redis.secretKey" -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretPasswordKey }}{{ else }}redis-password{{ end }}
{{- end }}

{{/* "redis" or "rediss" */}}
{{- define "loom.redis.scheme" -}}
{{- if eq (include "loom.redis.mode" .) "external" }}
{{- $url := .Values.redis.external.url }}
{{- if hasPrefix "rediss://" $url }}rediss{{ else if hasPrefix "redis://" $url }}redis{{ else }}{{ fail (printf "redis.external.url must start with redis:// or rediss://, got %q" $url) }}{{ end }}
{{- else }}redis{{ end }}
{{- end }}

{{/* host:port of Redis, without scheme, credentials or path. */}}
{{- define "loom.redis.hostPort" -}}
{{- if eq (include "loom.redis.mode" .) "external" }}
{{- $rest := .Values.redis.external.url | trimPrefix "rediss://" | trimPrefix "redis://" }}
{{- if contains "@" $rest }}{{ fail "redis.external.url must not hold credentials: use redis.auth.existingSecret" }}{{ end }}
{{- regexReplaceAll "/.*$" $rest "" }}
{{- else }}
{{- printf "%s.%s.svc:%d" (include "loom.redis.fullname" .) .Release.Namespace (int .Values.redis.port) }}
{{- end }}
{{- end }}

{{/* Address for Ray GCS fault tolerance: host:port, or rediss://host:port for TLS. */}}
{{- define "loom.redis.gcsAddress" -}}
{{- if eq (include "loom.redis.scheme" .) "rediss" }}rediss://{{ end }}{{ include "loom.redis.hostPort" . }}
{{- end }}

{{/* LOOM_REDIS_URL; $(LOOM_REDIS_PASSWORD) is expanded by Kubernetes from the env var defined
just before it, so the password never appears in the RayService spec. */}}
{{- define "loom.redis.url" -}}
{{- include "loom.redis.scheme" . }}://{{ if include "loom.redis.auth" . }}:$(LOOM_REDIS_PASSWORD)@{{ end }}{{ include "loom.redis.hostPort" . }}
{{- if eq (include "loom.redis.mode" .) "external" }}{{ regexFind "/.*$" (.Values.redis.external.url | trimPrefix "rediss://" | trimPrefix "redis://") }}{{ end }}
{{- end }}

{{/* ---- Ray containers ----------------------------------------------------------------- */}}

{{/* Environment shared by the head and worker containers. */}}
{{- define "loom.rayEnv" -}}
{{- if include "loom.redis.mode" . }}
{{- if include "loom.redis.auth" . }}
- name: LOOM_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "loom.redis.secretName" . }}
      key: {{ include "loom.redis.secretKey" . }}
{{- end }}
- name: LOOM_REDIS_URL
  value: {{ include "loom.redis.url" . | quote }}
{{- end }}
{{- $haproxy := ternary "1" "0" (eq .Values.loom.ingress "haproxy") }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: {{ $haproxy | quote }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: {{ $haproxy | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.otel.serviceName | quote }}
- name: OTEL_TRACES_EXPORTER
  value: {{ .Values.otel.tracesExporter | default (ternary "otlp" "none" (not (empty .Values.otel.endpoint))) | quote }}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
{{- end }}
{{- with .Values.otel.resourceAttributes }}
{{- $attrs := list }}
{{- range $k, $v := . }}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* rayStartParams: a map of strings (the CRD's type), "{}" when empty. */}}
{{- define "loom.rayStartParams" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- $_ := set $out $k (toString $v) }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* serveConfigV2: one application, cluster.app:app_builder with the LoomConfig mapping as its
args (the same mapping `loom serve --config` builds). */}}
{{- define "loom.serveConfigV2" -}}
{{- $app := dict "name" .Values.serve.applicationName "import_path" "cluster.app:app_builder" "route_prefix" "/" "args" .Values.loom }}
{{- with .Values.serve.runtimeEnv }}
{{- $_ := set $app "runtime_env" . }}
{{- end }}
{{- $cfg := dict "http_options" (dict "host" .Values.loom.host "port" .Values.loom.port) "applications" (list $app) }}
{{- toYaml $cfg }}
{{- end }}

{{/* Fail early when the worker group cannot hold the Loom workers' GPUs. A worker takes
loom.worker_num_gpus per tensor-parallel rank, all on one pod (its ranks are processes beside it). */}}
{{- define "loom.checkGpus" -}}
{{- $ranks := float64 (.Values.loom.engine.tensor_parallel_size | default 1) }}
{{- $per := mulf (float64 .Values.loom.worker_num_gpus) $ranks }}
{{- $pods := ternary .Values.workers.maxReplicas .Values.workers.replicas .Values.enableInTreeAutoscaling }}
{{- $field := ternary "maxReplicas" "replicas" .Values.enableInTreeAutoscaling }}
{{- if gt $per 0.0 }}
{{- if gt $per (float64 .Values.workers.gpus) }}
{{- fail (printf "a worker takes loom.worker_num_gpus x loom.engine.tensor_parallel_size = %v GPUs on one pod, but workers.gpus is %v" $per .Values.workers.gpus) }}
{{- end }}
{{- $fit := floor (divf (float64 .Values.workers.gpus) $per) }}
{{- $have := mulf (float64 $pods) $fit }}
{{- if gt (float64 .Values.loom.num_workers) $have }}
{{- fail (printf "loom.num_workers = %v workers of %v GPUs, but the worker group holds %v (workers.%s x %v a pod of workers.gpus = %v GPUs)" .Values.loom.num_workers $per $have $field $fit .Values.workers.gpus) }}
{{- end }}
{{- end }}
{{- if and .Values.gcsFaultTolerance.enabled (not (include "loom.redis.mode" .)) }}
{{- fail "gcsFaultTolerance.enabled needs Redis: set redis.enabled=true or redis.external.url" }}
{{- end }}
{{- end }}

{{/* A Ray container's securityContext: SYS_NICE while loom.engine.core_nice is set, so that a
worker may run vLLM's engine core above the niceness Ray starts its workers at (15); lowering
a process's niceness needs that capability. Empty when engine.core_nice is null. */}}
{{- define "loom.securityContext" -}}
{{- if not (kindIs "invalid" .Values.loom.engine.core_nice) }}
securityContext:
  capabilities:
    add: ["SYS_NICE"]
{{- end }}
{{- end }}
