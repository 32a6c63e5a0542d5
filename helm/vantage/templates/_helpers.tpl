{{/* The chart's name. */}}
{{- define "vantage.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name for every object; a region's objects add "-<region>". */}}
{{- define "vantage.fullname" -}}
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

{{- define "vantage.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "vantage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vantage.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vantage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vantage.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "vantage.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vantage.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vantage.checksConfigMap" -}}
{{- default (printf "%s-checks" (include "vantage.fullname" .)) .Values.existingChecksConfigMap }}
{{- end }}

{{- define "vantage.secretName" -}}
{{- default (printf "%s-env" (include "vantage.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* A duration ("10s", "1m30s", "500ms", "1d", or seconds) in milliseconds, rounded up. Units as
Prometheus and the agent read them: ms, s, m, h, d, and Prometheus's w and y. */}}
{{- define "vantage.milliseconds" -}}
{{- $text := toString . -}}
{{- $total := 0.0 -}}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?$" $text -}}
{{- $total = mulf (float64 $text) 1000.0 -}}
{{- else -}}
{{- $scales := dict "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0 "d" 86400000.0 "w" 604800000.0 "y" 31536000000.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ms|s|m|h|d|w|y)" $text -1 -}}
{{- $number := float64 (regexFind "^[0-9]+(\\.[0-9]+)?" .) -}}
{{- $unit := regexFind "(ms|s|m|h|d|w|y)$" . -}}
{{- $total = addf $total (mulf $number (get $scales $unit)) -}}
{{- end -}}
{{- end -}}
{{- ceil $total | int64 -}}
{{- end }}

{{/* A duration as whole seconds, rounded up. */}}
{{- define "vantage.seconds" -}}
{{- ceil (divf (include "vantage.milliseconds" .) 1000.0) | int64 -}}
{{- end }}

{{/* The pod's termination grace period: the agent's shutdown budget (agent.shutdownTimeout: drain
the runs, flush the telemetry) and a margin for the process to exit after it, so the kubelet's
SIGKILL never cuts a shutdown that keeps to its budget. */}}
{{- define "vantage.terminationGracePeriod" -}}
{{- add 5 (include "vantage.seconds" .Values.agent.shutdownTimeout) -}}
{{- end }}
