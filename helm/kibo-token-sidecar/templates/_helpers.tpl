{{/*
Named templates of kibo-token-sidecar.

The templates that build the sidecar (container, containers, initContainers,
env, volumes, podAnnotations, terminationGracePeriodSeconds) read only
.Values and .Release.Name, and they never use .Chart. So a parent chart can
call them with its own release and this chart's values:

  (dict "Values" .Values.kiboTokenSidecar "Release" .Release)

and gets the same Secret name as this chart's own templates produce. For the
same reason, the name falls back to the literal chart name rather than to
.Chart.Name.
*/}}

{{- define "kibo-token-sidecar.name" -}}
{{- default "kibo-token-sidecar" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kibo-token-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "kibo-token-sidecar.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kibo-token-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of the objects this chart creates. */}}
{{- define "kibo-token-sidecar.labels" -}}
helm.sh/chart: {{ include "kibo-token-sidecar.chart" . }}
{{ include "kibo-token-sidecar.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kibo-token-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kibo-token-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of the Secret that holds the Kibo credentials. */}}
{{- define "kibo-token-sidecar.secretName" -}}
{{- default (include "kibo-token-sidecar.fullname" .) .Values.kibo.existingSecret }}
{{- end }}

{{/*
Drain delay in seconds: the value of shutdown.drainDelaySeconds, or, when it
is null, 5 in classic mode and 0 in native mode.
*/}}
{{- define "kibo-token-sidecar.drainDelaySeconds" -}}
{{- $delay := .Values.shutdown.drainDelaySeconds }}
{{- if kindIs "invalid" $delay }}
{{- if eq .Values.mode "classic" }}5{{ else }}0{{ end }}
{{- else }}
{{- $delay }}
{{- end }}
{{- end }}

{{/*
Pod termination grace period, checked against the sidecar's shutdown. After
SIGTERM the sidecar serves for the drain delay, then gives in-flight requests
up to shutdown.graceSeconds, and then needs a moment to exit. The kubelet
sends SIGKILL when the period runs out, so the period must cover all three.
The 5 seconds for the exit is a margin, not a measured bound.
*/}}
{{- define "kibo-token-sidecar.terminationGracePeriodSeconds" -}}
{{- $period := .Values.terminationGracePeriodSeconds | int }}
{{- $drain := include "kibo-token-sidecar.drainDelaySeconds" . | float64 }}
{{- $grace := .Values.shutdown.graceSeconds | float64 }}
{{- $needed := addf $drain $grace 5 }}
{{- if lt (float64 $period) $needed }}
{{- fail (printf "terminationGracePeriodSeconds is %d, but the sidecar's drain delay (%v s) plus shutdown.graceSeconds (%v s) plus 5 s to exit needs at least %v; raise terminationGracePeriodSeconds or lower the other two" $period $drain $grace $needed) }}
{{- end }}
{{- $period }}
{{- end }}

{{/* Fail early, with the value to fix, on settings that cannot work. */}}
{{- define "kibo-token-sidecar.validate" -}}
{{- if not .Values.kibo.apiUrl }}
{{- fail "kibo.apiUrl is required: set it to the tenant's Kibo API base URL, for example https://t12345.sandbox.mozu.com" }}
{{- end }}
{{- if not .Values.kibo.existingSecret }}
{{- $credentials := .Values.kibo.credentials }}
{{- if or (not $credentials.clientId) (not $credentials.clientSecret) }}
{{- fail "kibo.credentials.clientId and kibo.credentials.clientSecret are required unless kibo.existingSecret names a Secret that holds them" }}
{{- end }}
{{- if .Values.kibo.customer.enabled }}
{{- if ne (empty $credentials.customerUsername) (empty $credentials.customerPassword) }}
{{- fail "kibo.credentials.customerUsername and kibo.credentials.customerPassword must be set together" }}
{{- end }}
{{- if and (empty $credentials.customerPassword) (empty $credentials.customerRefreshToken) }}
{{- fail "kibo.customer.enabled is true, but neither kibo.credentials.customerUsername/customerPassword nor kibo.credentials.customerRefreshToken is set" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* host:port for a listen address, with brackets around an IPv6 host. */}}
{{- define "kibo-token-sidecar.hostPort" -}}
{{- $host := index . 0 }}
{{- $port := index . 1 | int }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host $port }}
{{- else }}
{{- printf "%s:%d" $host $port }}
{{- end }}
{{- end }}

{{/* One env entry whose value comes from the credentials Secret. */}}
{{- define "kibo-token-sidecar.secretEnv" -}}
- name: {{ .variable }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}

{{/*
Env list of the sidecar container. Credentials come from the Secret through
secretKeyRef, so they never appear in the pod spec.
*/}}
{{- define "kibo-token-sidecar.env" -}}
{{- $secretName := include "kibo-token-sidecar.secretName" . }}
{{- $keys := .Values.kibo.secretKeys }}
{{- $credentials := .Values.kibo.credentials }}
{{- $existing := .Values.kibo.existingSecret -}}
- name: KIBO_API_URL
  value: {{ .Values.kibo.apiUrl | quote }}
- name: KIBO_AUTH_URL
  value: {{ .Values.kibo.authUrl | quote }}
{{- if not (kindIs "invalid" .Values.kibo.accountId) }}
- name: KIBO_ACCOUNT_ID
  value: {{ .Values.kibo.accountId | int64 | toString | quote }}
{{- end }}
{{ include "kibo-token-sidecar.secretEnv" (dict "variable" "KIBO_CLIENT_ID" "secretName" $secretName "key" $keys.clientId) }}
{{ include "kibo-token-sidecar.secretEnv" (dict "variable" "KIBO_CLIENT_SECRET" "secretName" $secretName "key" $keys.clientSecret) }}
{{- if .Values.kibo.customer.enabled }}
{{- if and $keys.customerUsername (or $existing $credentials.customerUsername) }}
{{ include "kibo-token-sidecar.secretEnv" (dict "variable" "KIBO_CUSTOMER_USERNAME" "secretName" $secretName "key" $keys.customerUsername) }}
{{- end }}
{{- if and $keys.customerPassword (or $existing $credentials.customerPassword) }}
{{ include "kibo-token-sidecar.secretEnv" (dict "variable" "KIBO_CUSTOMER_PASSWORD" "secretName" $secretName "key" $keys.customerPassword) }}
{{- end }}
{{- if and $keys.customerRefreshToken (or $existing $credentials.customerRefreshToken) }}
{{ include "kibo-token-sidecar.secretEnv" (dict "variable" "KIBO_CUSTOMER_REFRESH_TOKEN" "secretName" $secretName "key" $keys.customerRefreshToken "optional" (not (empty $existing))) }}
{{- end }}
{{- end }}
- name: SIDECAR_LISTEN
  value: {{ include "kibo-token-sidecar.hostPort" (list .Values.proxyListenAddress .Values.proxyPort) | quote }}
- name: SIDECAR_ADMIN_LISTEN
  value: {{ include "kibo-token-sidecar.hostPort" (list .Values.adminListenAddress .Values.adminPort) | quote }}
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: SIDECAR_DRAIN_DELAY_SECONDS
  value: {{ include "kibo-token-sidecar.drainDelaySeconds" . | quote }}
- name: SIDECAR_SHUTDOWN_GRACE_SECONDS
  value: {{ .Values.shutdown.graceSeconds | toString | quote }}
{{- if .Values.stateFile.enabled }}
- name: SIDECAR_STATE_FILE
  value: {{ printf "%s/tokens.json" (trimSuffix "/" .Values.stateFile.mountPath) | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The sidecar container as one list item. In native mode it carries
restartPolicy: Always and belongs under initContainers, in classic mode under
containers. The initContainers and containers templates below place it by
mode.
*/}}
{{- define "kibo-token-sidecar.container" -}}
{{- include "kibo-token-sidecar.validate" . -}}
- name: {{ .Values.containerName }}
  image: {{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq .Values.mode "native" }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: {{ .Values.portNames.proxy }}
      containerPort: {{ .Values.proxyPort }}
      protocol: TCP
    - name: {{ .Values.portNames.admin }}
      containerPort: {{ .Values.adminPort }}
      protocol: TCP
  env:
    {{- include "kibo-token-sidecar.env" . | nindent 4 }}
  {{- if .Values.probes.startup.enabled }}
  startupProbe:
    httpGet:
      path: /livez
      port: {{ .Values.portNames.admin }}
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  {{- end }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ .Values.portNames.admin }}
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /livez
      port: {{ .Values.portNames.admin }}
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.stateFile.enabled }}
  volumeMounts:
    - name: {{ printf "%s-state" .Values.containerName | trunc 63 | trimSuffix "-" }}
      mountPath: {{ .Values.stateFile.mountPath }}
  {{- end }}
{{- end }}

{{/* The sidecar container item in native mode, nothing in classic mode. */}}
{{- define "kibo-token-sidecar.initContainers" -}}
{{- if eq .Values.mode "native" }}
{{- include "kibo-token-sidecar.container" . }}
{{- end }}
{{- end }}

{{/* The sidecar container item in classic mode, nothing in native mode. */}}
{{- define "kibo-token-sidecar.containers" -}}
{{- if eq .Values.mode "classic" }}
{{- include "kibo-token-sidecar.container" . }}
{{- end }}
{{- end }}

{{/* Pod volumes the sidecar mounts: the state volume, when enabled. */}}
{{- define "kibo-token-sidecar.volumes" -}}
{{- if .Values.stateFile.enabled -}}
- name: {{ printf "%s-state" .Values.containerName | trunc 63 | trimSuffix "-" }}
  emptyDir:
    sizeLimit: {{ .Values.stateFile.sizeLimit }}
{{- end }}
{{- end }}

{{/* data of the Secret the chart creates, base64 encoded. */}}
{{- define "kibo-token-sidecar.secretData" -}}
{{- $keys := .Values.kibo.secretKeys }}
{{- $credentials := .Values.kibo.credentials -}}
{{ $keys.clientId }}: {{ $credentials.clientId | b64enc }}
{{ $keys.clientSecret }}: {{ $credentials.clientSecret | b64enc }}
{{- if .Values.kibo.customer.enabled }}
{{- if and $keys.customerUsername $credentials.customerUsername }}
{{ $keys.customerUsername }}: {{ $credentials.customerUsername | b64enc }}
{{- end }}
{{- if and $keys.customerPassword $credentials.customerPassword }}
{{ $keys.customerPassword }}: {{ $credentials.customerPassword | b64enc }}
{{- end }}
{{- if and $keys.customerRefreshToken $credentials.customerRefreshToken }}
{{ $keys.customerRefreshToken }}: {{ $credentials.customerRefreshToken | b64enc }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod annotations for the sidecar: Prometheus discovery, and a checksum of the
Secret the chart creates, so a credentials change rolls the pods. The
sidecar reads its credentials only at start, so without the roll it would
keep the old ones. A Secret named by kibo.existingSecret gets no checksum.
*/}}
{{- define "kibo-token-sidecar.podAnnotations" -}}
{{- $annotations := dict }}
{{- if .Values.metrics.podAnnotations.enabled }}
{{- $_ := set $annotations "prometheus.io/scrape" "true" }}
{{- $_ := set $annotations "prometheus.io/port" (.Values.adminPort | int | toString) }}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" }}
{{- end }}
{{- if not .Values.kibo.existingSecret }}
{{- $_ := set $annotations "checksum/kibo-token-sidecar-secret" (include "kibo-token-sidecar.secretData" . | sha256sum) }}
{{- end }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}
