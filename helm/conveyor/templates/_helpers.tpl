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

{{/*
A service's database roles (docs/databases.md): "migrator" owns the database and its schema
and runs the migrator Job; "runtime" is what the service's API and worker connect as (DML
only); "relay" is what the workers of the services that deliver to this one write its inbox
with, with push delivery (INSERT only; a service nobody delivers to has none); "puller" is
what the workers of the services it publishes to read its outbox with, with pull delivery
(SELECT on the outbox, their position reports; a service that publishes to nobody has none).
The helpers below take (dict "root" $ "service" "catalog" "role" "runtime").
*/}}

{{/* The role's name: services.<svc>.database.roles.<role>.username, else <svc>_<role>. */}}
{{- define "conveyor.roleName" -}}
{{- $r := get (get .root.Values.services .service).database.roles .role }}
{{- default (printf "%s_%s" .service .role) $r.username }}
{{- end }}

{{/*
The services that publish to a service (whose `subscribers` in the image contract name it),
in the contract's order, as a JSON list: the outboxes its worker reads with pull delivery
(conveyor_contracts::publishers_to). Use: include "conveyor.publishers" (dict "root" $
"service" "stock") | fromJsonArray
*/}}
{{- define "conveyor.publishers" -}}
{{- $contract := include "conveyor.contract" .root | fromYaml }}
{{- $publishers := list }}
{{- range $contract.services }}{{ if has $.service .subscribers }}{{ $publishers = append $publishers .name }}{{ end }}{{ end }}
{{- toJson $publishers }}
{{- end }}

{{/* Non-empty when some worker delivers to the service (it then has a relay role). Takes (dict "root" $ "service" "catalog"). */}}
{{- define "conveyor.receives" -}}
{{- if include "conveyor.publishers" . | fromJsonArray }}yes{{ end }}
{{- end }}

{{/* Non-empty when the service publishes to some other (it then has a puller role). Takes (dict "root" $ "service" "catalog"). */}}
{{- define "conveyor.publishes" -}}
{{- $contract := include "conveyor.contract" .root | fromYaml }}
{{- range $contract.services }}{{ if and (eq .name $.service) .subscribers }}yes{{ end }}{{ end }}
{{- end }}

{{/*
The role other services' workers reach a service's database with under the delivery in use
(values `delivery`): "relay" with push when somebody delivers to it, "puller" with pull when
it publishes to somebody; empty otherwise. Only this one of the two gets a Secret, is
created by the demo PostgreSQL and is granted its privileges by the migrator. Takes
(dict "root" $ "service" "catalog").
*/}}
{{- define "conveyor.deliveryRole" -}}
{{- if eq .root.Values.delivery "pull" }}
{{- if include "conveyor.publishes" . }}puller{{ end }}
{{- else }}
{{- if include "conveyor.receives" . }}relay{{ end }}
{{- end }}
{{- end }}

{{/*
The other services' databases a service's worker connects to under the delivery in use, as
JSON: with push its subscribers' (their relay roles, in SUBSCRIBERS, one SUBSCRIBER_URL_<SVC>
each), with pull its publishers' (their puller roles, in PUBLISHERS, one PUBLISHER_URL_<SVC>
each). Takes (dict "root" $ "service" "catalog"). Use: … | fromJson
*/}}
{{- define "conveyor.workerPeers" -}}
{{- if eq .root.Values.delivery "pull" }}
{{- toJson (dict "role" "puller" "variable" "PUBLISHERS" "prefix" "PUBLISHER_URL_" "services" (include "conveyor.publishers" . | fromJsonArray)) }}
{{- else }}
{{- $contract := include "conveyor.contract" .root | fromYaml }}
{{- $subscribers := list }}
{{- range $contract.services }}{{ if eq .name $.service }}{{ $subscribers = .subscribers }}{{ end }}{{ end }}
{{- toJson (dict "role" "relay" "variable" "SUBSCRIBERS" "prefix" "SUBSCRIBER_URL_" "services" $subscribers) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding a role's URL: the role's existingSecret, else the chart's:
<svc>-db (runtime), <svc>-db-relay (relay), <svc>-db-puller (puller), <svc>-db-migrate
(migrator; a hook, because on the first install regular resources do not exist yet when
pre-install hooks run).
*/}}
{{- define "conveyor.roleSecretName" -}}
{{- $r := get (get .root.Values.services .service).database.roles .role }}
{{- if $r.existingSecret }}
{{- $r.existingSecret }}
{{- else }}
{{- printf "%s-%s-%s" (include "conveyor.fullname" .root) .service (get (dict "runtime" "db" "relay" "db-relay" "puller" "db-puller" "migrator" "db-migrate") .role) }}
{{- end }}
{{- end }}

{{- define "conveyor.roleSecretKey" -}}
{{- $r := get (get .root.Values.services .service).database.roles .role }}
{{- if $r.existingSecret }}{{ $r.existingSecretKey }}{{ else }}DATABASE_URL{{ end }}
{{- end }}

{{/*
A role's password: its password value, else (with the demo PostgreSQL) one derived from the
demo server's admin password, so it stays the same across upgrades as that one does.
*/}}
{{- define "conveyor.rolePassword" -}}
{{- $r := get (get .root.Values.services .service).database.roles .role }}
{{- if $r.password }}
{{- $r.password }}
{{- else if .root.Values.postgres.enabled }}
{{- printf "%s/%s" (include "conveyor.postgresPassword" .root) (include "conveyor.roleName" .) | sha256sum | trunc 32 }}
{{- end }}
{{- end }}

{{/* A role's URL when the chart makes its Secret: its url, else built from its name and password. */}}
{{- define "conveyor.roleUrl" -}}
{{- $root := .root }}
{{- $db := (get $root.Values.services .service).database }}
{{- $r := get $db.roles .role }}
{{- if $r.url }}
{{- $r.url }}
{{- else }}
{{- $auth := include "conveyor.urlEscape" (include "conveyor.roleName" .) }}
{{- with include "conveyor.rolePassword" . }}
{{- $auth = printf "%s:%s" $auth (include "conveyor.urlEscape" .) }}
{{- end }}
{{- if $root.Values.postgres.enabled }}
{{- printf "postgres://%s@%s:5432/%s" $auth (include "conveyor.postgresHost" $root) $db.name }}
{{- else }}
{{- $d := $root.Values.database }}
{{- printf "postgres://%s@%s:%d/%s" $auth $d.host (int $d.port) $db.name }}
{{- with $d.params }}?{{ . }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A pod annotation that changes when a URL the chart makes for `roles` changes (a list of
(dict "service" … "role" …)), so pods restart on a new password; empty when the chart makes
none of them. Takes (dict "root" $ "roles" <list>).
*/}}
{{- define "conveyor.urlsChecksum" -}}
{{- $urls := list }}
{{- range .roles }}
{{- $ctx := dict "root" $.root "service" .service "role" .role }}
{{- if not (get (get (get $.root.Values.services .service).database.roles .role) "existingSecret") }}
{{- $urls = append $urls (include "conveyor.roleUrl" $ctx) }}
{{- end }}
{{- end }}
{{- with $urls }}checksum/database-urls: {{ join "\n" . | sha256sum }}{{ end }}
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
      name: {{ include "conveyor.roleSecretName" (dict "root" $root "service" .service "role" "runtime") }}
      key: {{ include "conveyor.roleSecretKey" (dict "root" $root "service" .service "role" "runtime") }}
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

{{/*
Bearer tokens (docs/security.md; values `auth`). "conveyor.authCheck" fails the render unless
auth.issuer and exactly one source of keys are given, and checks an inline JWKS: a JSON Web Key
Set of public keys (it goes into a ConfigMap, which is no place for private key material).
*/}}
{{- define "conveyor.authCheck" -}}
{{- $auth := .Values.auth }}
{{- $_ := required "auth.issuer is required: the `iss` of the tokens the APIs accept, i.e. your identity provider's issuer (docs/security.md)" $auth.issuer }}
{{- $sources := list }}
{{- if $auth.jwksUrl }}{{ $sources = append $sources "auth.jwksUrl" }}{{ end }}
{{- if $auth.jwks }}{{ $sources = append $sources "auth.jwks" }}{{ end }}
{{- if $auth.existingJwksConfigMap }}{{ $sources = append $sources "auth.existingJwksConfigMap" }}{{ end }}
{{- if not $sources }}
{{- fail "the APIs need the identity provider's public keys: set auth.jwksUrl (its jwks_uri), auth.jwks (a JWKS document) or auth.existingJwksConfigMap (docs/security.md)" }}
{{- end }}
{{- if gt (len $sources) 1 }}
{{- fail (printf "give the identity provider's keys one way, not %s" (join " and " $sources)) }}
{{- end }}
{{- with $auth.jwks }}
{{- $doc := fromJson . }}
{{- if or (hasKey $doc "Error") (not (kindIs "slice" (get $doc "keys"))) (empty (get $doc "keys")) }}
{{- fail "auth.jwks is not a JSON Web Key Set: expected a JSON document {\"keys\": [...]} with at least one key" }}
{{- end }}
{{- range $i, $key := get $doc "keys" }}
{{- if not (kindIs "map" $key) }}
{{- fail (printf "auth.jwks: key %d is not a JSON object" $i) }}
{{- end }}
{{- range $member := list "d" "p" "q" "dp" "dq" "qi" "oth" "k" }}
{{- if hasKey $key $member }}
{{- fail (printf "auth.jwks: key %d has the private or symmetric member %q; give the public keys only" $i $member) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the APIs find the JWKS when it is a file: the mounted ConfigMap (the chart's or yours). */}}
{{- define "conveyor.jwksDir" -}}/etc/conveyor/jwks{{- end }}

{{- define "conveyor.jwksConfigMapName" -}}
{{- default (printf "%s-jwks" (include "conveyor.fullname" .)) .Values.auth.existingJwksConfigMap }}
{{- end }}

{{/* AUTH_* variables of every API. */}}
{{- define "conveyor.authEnv" -}}
{{- $auth := .Values.auth -}}
- name: AUTH_JWKS
  value: {{ default (printf "%s/jwks.json" (include "conveyor.jwksDir" .)) $auth.jwksUrl | quote }}
- name: AUTH_ISSUER
  value: {{ $auth.issuer | quote }}
- name: AUTH_AUDIENCE
  value: {{ $auth.audience | quote }}
- name: AUTH_LEEWAY
  value: {{ $auth.leeway | quote }}
- name: AUTH_OPERATOR_ROLE
  value: {{ $auth.operatorRole | quote }}
{{- end }}

{{/* The JWKS volume of every API (none with auth.jwksUrl). */}}
{{- define "conveyor.jwksVolume" -}}
{{- if not .Values.auth.jwksUrl -}}
- name: jwks
  configMap:
    name: {{ include "conveyor.jwksConfigMapName" . }}
    items:
      - key: {{ ternary .Values.auth.existingJwksConfigMapKey "jwks.json" (not (empty .Values.auth.existingJwksConfigMap)) }}
        path: jwks.json
{{- end }}
{{- end }}

{{- define "conveyor.jwksMount" -}}
{{- if not .Values.auth.jwksUrl -}}
- name: jwks
  mountPath: {{ include "conveyor.jwksDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Where notification-worker finds its token for order-api (auth.lookupToken). */}}
{{- define "conveyor.lookupTokenDir" -}}/var/run/secrets/conveyor/order-api-token{{- end }}

{{/*
The port of a URL: its explicit one, else 443 for https and 80 otherwise (NetworkPolicies).
*/}}
{{- define "conveyor.urlPort" -}}
{{- $url := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" }}
{{- default (ternary "443" "80" (eq $url.scheme "https")) $port }}
{{- end }}
