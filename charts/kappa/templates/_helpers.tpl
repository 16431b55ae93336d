{{/* Names, labels and shared pod pieces of the kappa chart. */}}

{{- define "kappa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kappa.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one role's objects: <fullname>-<role>. */}}
{{- define "kappa.component" -}}
{{- printf "%s-%s" (include "kappa.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kappa.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kappa.labels" -}}
helm.sh/chart: {{ include "kappa.chart" . }}
app.kubernetes.io/name: {{ include "kappa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kappa
{{- end -}}

{{/* Labels of one role: call with (dict "root" $ "component" "router"). */}}
{{- define "kappa.componentLabels" -}}
{{ include "kappa.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kappa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kappa.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kappa.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kappa.functionNamespace" -}}
{{- default .Release.Namespace .Values.functionNamespace -}}
{{- end -}}

{{- define "kappa.tokenSecretName" -}}
{{- default (printf "%s-token" (include "kappa.fullname" .)) .Values.token.existingSecret -}}
{{- end -}}

{{- define "kappa.tokenSecretKey" -}}
{{- if .Values.token.existingSecret -}}{{ .Values.token.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/* In-cluster URLs between the roles. */}}
{{- define "kappa.apiUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "kappa.component" (dict "root" . "component" "api")) .Release.Namespace .Values.api.port -}}
{{- end -}}
{{- define "kappa.executorUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "kappa.component" (dict "root" . "component" "executor")) .Release.Namespace .Values.executor.port -}}
{{- end -}}
{{- define "kappa.routerInternalUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "kappa.component" (dict "root" . "component" "router-internal")) .Release.Namespace .Values.router.internalPort -}}
{{- end -}}

{{/* Environment every role gets: call with (dict "root" $ "role" "api"). */}}
{{- define "kappa.commonEnv" -}}
- name: KAPPA_ROLE
  value: {{ .role | quote }}
- name: KAPPA_STORE
  value: kubernetes
- name: KAPPA_DATA_DIR
  value: /var/lib/kappa
- name: KAPPA_ADMIN_ADDR
  value: {{ printf "0.0.0.0:%v" .root.Values.admin.port | quote }}
- name: KAPPA_SHUTDOWN_GRACE
  value: {{ .root.Values.shutdownGraceSeconds | quote }}
- name: KAPPA_METRICS_NEED_TOKEN
  value: {{ .root.Values.admin.metricsNeedToken | default false | quote }}
- name: KAPPA_REPLICA
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: KAPPA_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: KAPPA_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "kappa.tokenSecretName" .root }}
      key: {{ include "kappa.tokenSecretKey" .root }}
{{- with .root.Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "kappa-%s" $.role | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $.root.Values.tracing.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $.root.Values.tracing.samplerArg | quote }}
{{- end }}
- name: RUST_LOG
  value: {{ .root.Values.logLevel | quote }}
{{- end -}}

{{/* Probes on the admin listener. */}}
{{- define "kappa.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 3
{{- end -}}

{{/* Pod-level settings shared by the roles: call with (dict "root" $ "values" .Values.api). */}}
{{- define "kappa.podSpecCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ add .root.Values.shutdownGraceSeconds 15 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
