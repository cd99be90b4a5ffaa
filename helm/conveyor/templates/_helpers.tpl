{{/*
Helpers shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name. At most 36 characters, so that the longest suffix the
chart adds ("-notification-db-migrate", 24) still fits the 63 characters of a DNS label.
*/}}
{{- define "conveyor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 36 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 36 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 36 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "conveyor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "conveyor.labels" -}}
helm.sh/chart: {{ include "conveyor.chart" . }}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: conveyor
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels that identify the release's pods (immutable selectors). */}}
{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one part of one service. Takes (dict "root" $ "service" "catalog" "component" "api");
"service" may be empty for parts that belong to no one service.
*/}}
{{- define "conveyor.componentLabels" -}}
{{ include "conveyor.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .service }}
conveyor/service: {{ . }}
{{- end }}
{{- end }}

{{- define "conveyor.componentSelectorLabels" -}}
{{ include "conveyor.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .service }}
conveyor/service: {{ . }}
{{- end }}
{{- end }}

{{/* The image contract (image-contract.yaml), parsed. Use: include "conveyor.contract" . | fromYaml */}}
{{- define "conveyor.contract" -}}
{{- $contract := .Files.Get "image-contract.yaml" | fromYaml }}
{{- if or (not $contract) (hasKey $contract "Error") }}
{{- fail "image-contract.yaml is missing from the chart or is not valid YAML" }}
{{- end }}
{{- toYaml $contract }}
{{- end }}

{{- define "conveyor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Recursive merge: the keys of .src written into the map .dst (nested maps merged, anything
else replaced, false and 0 included — unlike sprig's mergeOverwrite).
*/}}
{{- define "conveyor.mergeInto" -}}
{{- $dst := .dst }}
{{- range $key, $value := .src }}
{{- $current := get $dst $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $current) }}
{{- include "conveyor.mergeInto" (dict "dst" $current "src" $value) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The settings of one part of one service: .Values.<part> with services.<svc>.<part> merged
over it, as YAML. Takes (dict "root" $ "service" "catalog" "part" "api").
*/}}
{{- define "conveyor.partValues" -}}
{{- $merged := deepCopy (get .root.Values .part) }}
{{- $svc := get .root.Values.services .service }}
{{- include "conveyor.mergeInto" (dict "dst" $merged "src" (deepCopy (default dict (get $svc .part)))) }}
{{- toYaml $merged }}
{{- end }}

{{/* Name of the Secret holding a service's DATABASE_URL (the chart's or an existing one). */}}
{{- define "conveyor.dbSecretName" -}}
{{- $db := (get .root.Values.services .service).database }}
{{- if $db.existingSecret }}
{{- $db.existingSecret }}
{{- else }}
{{- printf "%s-%s-db" (include "conveyor.fullname" .root) .service }}
{{- end }}
{{- end }}

{{- define "conveyor.dbSecretKey" -}}
{{- $db := (get .root.Values.services .service).database }}
{{- if $db.existingSecret }}{{ $db.existingSecretKey }}{{ else }}DATABASE_URL{{ end }}
{{- end }}

{{/* Name of the Secret the migrator reads (its own hook Secret, or the existing one). */}}
{{- define "conveyor.migratorSecretName" -}}
{{- $db := (get .root.Values.services .service).database }}
{{- if $db.existingSecret }}
{{- $db.existingSecret }}
{{- else }}
{{- printf "%s-%s-db-migrate" (include "conveyor.fullname" .root) .service }}
{{- end }}
{{- end }}

{{- define "conveyor.postgresHost" -}}
{{- printf "%s-postgres" (include "conveyor.fullname" .) }}
{{- end }}

{{/*
The demo PostgreSQL's password: postgres.auth.password, else the one in its existing Secret
(lookup, so upgrades keep it), else a random one made once per render.
*/}}
{{- define "conveyor.postgresPassword" -}}
{{- if .Values.postgres.auth.password }}
{{- .Values.postgres.auth.password }}
{{- else }}
{{- if not (hasKey .Values.postgres.auth "_generated") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-postgres" (include "conveyor.fullname" .)) }}
{{- $password := "" }}
{{- if and $existing $existing.data (hasKey $existing.data "password") }}
{{- $password = index $existing.data "password" | b64dec }}
{{- else }}
{{- $password = randAlphaNum 32 }}
{{- end }}
{{- $_ := set .Values.postgres.auth "_generated" $password }}
{{- end }}
{{- index .Values.postgres.auth "_generated" }}
{{- end }}
{{- end }}

{{/* URL-encodes one part of a URL's user information (urlquery turns spaces into "+"). */}}
{{- define "conveyor.urlEscape" -}}
{{- urlquery . | replace "+" "%20" }}
{{- end }}

{{/* A service's DATABASE_URL when the chart makes its Secret. Takes (dict "root" $ "service" "catalog"). */}}
{{- define "conveyor.databaseUrl" -}}
{{- $root := .root }}
{{- $db := (get $root.Values.services .service).database }}
{{- if $db.url }}
{{- $db.url }}
{{- else if $root.Values.postgres.enabled }}
{{- printf "postgres://%s:%s@%s:5432/%s" (include "conveyor.urlEscape" $root.Values.postgres.auth.username) (include "conveyor.urlEscape" (include "conveyor.postgresPassword" $root)) (include "conveyor.postgresHost" $root) $db.name }}
{{- else }}
{{- $d := $root.Values.database }}
{{- $auth := include "conveyor.urlEscape" $d.username }}
{{- if $d.password }}
{{- $auth = printf "%s:%s" $auth (include "conveyor.urlEscape" $d.password) }}
{{- end }}
{{- printf "postgres://%s@%s:%d/%s" $auth $d.host (int $d.port) $db.name }}
{{- with $d.params }}?{{ . }}{{ end }}
{{- end }}
{{- end }}

{{/* The pod securityContext every pod of the chart runs with. */}}
{{- define "conveyor.podSecurityContext" -}}
{{- $contract := include "conveyor.contract" . | fromYaml -}}
runAsNonRoot: true
runAsUser: {{ $contract.user.uid }}
runAsGroup: {{ $contract.user.gid }}
fsGroup: {{ $contract.user.gid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The container securityContext every container of the chart runs with. */}}
{{- define "conveyor.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Volume mounts and volumes for the contract's writable paths (an emptyDir each). */}}
{{- define "conveyor.writableMounts" -}}
{{- $contract := include "conveyor.contract" . | fromYaml }}
{{- $mounts := list }}
{{- range $contract.writablePaths }}
{{- $mounts = append $mounts (dict "name" (regexReplaceAll "[^a-z0-9]+" (lower .) "-" | trimAll "-" | printf "rw-%s") "mountPath" .) }}
{{- end }}
{{- toYaml $mounts }}
{{- end }}

{{- define "conveyor.writableVolumes" -}}
{{- $contract := include "conveyor.contract" . | fromYaml }}
{{- $volumes := list }}
{{- range $contract.writablePaths }}
{{- $volumes = append $volumes (dict "name" (regexReplaceAll "[^a-z0-9]+" (lower .) "-" | trimAll "-" | printf "rw-%s") "emptyDir" (dict "sizeLimit" "64Mi")) }}
{{- end }}
{{- toYaml $volumes }}
{{- end }}

{{/*
Environment every API and worker shares. Takes (dict "root" $ "service" "catalog"
"process" "catalog-api" "port" 8080 "part" <merged part values>).
*/}}
{{- define "conveyor.commonEnv" -}}
{{- $root := .root -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "conveyor.dbSecretName" . }}
      key: {{ include "conveyor.dbSecretKey" . }}
- name: DB_MAX_CONNECTIONS
  value: {{ .part.dbMaxConnections | quote }}
- name: LISTEN_ADDR
  value: {{ printf "0.0.0.0:%d" (int .port) | quote }}
- name: LOG_FORMAT
  value: {{ $root.Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ $root.Values.logLevel | quote }}
{{ include "conveyor.otelEnv" . }}
{{- end }}

{{/* OTEL_* variables. Takes the same dict as conveyor.commonEnv. */}}
{{- define "conveyor.otelEnv" -}}
{{- $otel := .root.Values.otel -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SERVICE_NAME
  value: {{ .process | quote }}
{{- $attrs := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" (printf "k8s.deployment.name=%s-%s" (include "conveyor.fullname" .root) .process) }}
{{- range $k, $v := $otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- if $otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $otel.protocol | quote }}
{{- end }}
{{- with $otel.tracesSampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $otel.tracesSamplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- range $k, $v := $otel.env }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* An HTTP probe. Takes (dict "path" "/health/live" "settings" <probe values>). */}}
{{- define "conveyor.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{- range $k := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" }}
{{- if hasKey $.settings $k }}
{{ $k }}: {{ get $.settings $k | int }}
{{- end }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a pod spec from a part's values. */}}
{{- define "conveyor.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* An autoscaling/v2 HorizontalPodAutoscaler. Takes (dict "root" $ "name" … "labels" … "hpa" <autoscaling values>). */}}
{{- define "conveyor.hpa" -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- .labels | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .name }}
  minReplicas: {{ .hpa.minReplicas }}
  maxReplicas: {{ .hpa.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .hpa.targetCPUUtilizationPercentage }}
    {{- if .hpa.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ .hpa.targetMemoryUtilizationPercentage }}
    {{- end }}
  {{- with .hpa.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
