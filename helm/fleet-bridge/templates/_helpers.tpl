{{/* Chart name, truncated to the 63 characters DNS labels allow. */}}
{{- define "fleet-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already holds it. */}}
{{- define "fleet-bridge.fullname" -}}
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

{{- define "fleet-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fleet-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleet-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fleet-bridge.labels" -}}
helm.sh/chart: {{ include "fleet-bridge.chart" . }}
{{ include "fleet-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleet-bridge
{{- end }}

{{- define "fleet-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fleet-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fleet-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The store URL from the rendered config ("" when unset: the app default is SQLite). */}}
{{- define "fleet-bridge.storeURL" -}}
{{- $store := default dict .Values.config.store }}
{{- default "sqlite:////var/lib/fleet-bridge/bridge.db" $store.url }}
{{- end }}

{{/* "true" when the store is PostgreSQL (several replicas allowed), else "". */}}
{{- define "fleet-bridge.isPostgres" -}}
{{- $url := include "fleet-bridge.storeURL" . }}
{{- if or (hasPrefix "postgresql://" $url) (hasPrefix "postgres://" $url) }}true{{ end }}
{{- end }}

{{/* "true" when a PVC backs /data (SQLite store with persistence enabled). */}}
{{- define "fleet-bridge.usePVC" -}}
{{- if and .Values.persistence.enabled (not (include "fleet-bridge.isPostgres" .)) }}true{{ end }}
{{- end }}

{{- define "fleet-bridge.pvcName" -}}
{{- default (printf "%s-data" (include "fleet-bridge.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "fleet-bridge.secretName" -}}
{{- default (include "fleet-bridge.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "fleet-bridge.port" -}}
{{- $server := default dict .Values.config.server }}
{{- default 8080 $server.port }}
{{- end }}

{{/* Refuse configurations that cannot work. */}}
{{- define "fleet-bridge.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "fleet-bridge.isPostgres" .)) }}
{{- fail (printf "replicaCount=%d needs a PostgreSQL store: SQLite supports a single replica. Set config.store.url to postgresql://… or replicaCount to 1." (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set only one of minAvailable and maxUnavailable (null the other)" }}
{{- end }}
{{- end }}
