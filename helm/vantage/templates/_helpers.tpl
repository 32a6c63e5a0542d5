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

{{/* A duration ("10s", "1m30s", "500ms", or seconds) as whole seconds, rounded up. */}}
{{- define "vantage.seconds" -}}
{{- $text := toString . -}}
{{- $total := 0.0 -}}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?$" $text -}}
{{- $total = float64 $text -}}
{{- else -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ms|s|m|h)" $text -1 -}}
{{- $number := float64 (regexFind "^[0-9]+(\\.[0-9]+)?" .) -}}
{{- $unit := regexFind "(ms|s|m|h)$" . -}}
{{- $scale := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit -}}
{{- $total = addf $total (mulf $number $scale) -}}
{{- end -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end }}
