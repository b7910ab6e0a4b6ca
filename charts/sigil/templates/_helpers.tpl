{{/* The chart name, or nameOverride. */}}
{{- define "sigil.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base name of every object: fullnameOverride, or the release name when it
already contains the chart name, or "<release>-<chart>". Suffixes such as
"-issuer" are appended, so it is kept to 45 characters.
*/}}
{{- define "sigil.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sigil.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "sigil.labels" -}}
helm.sh/chart: {{ include "sigil.chart" . }}
app.kubernetes.io/name: {{ include "sigil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sigil
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "issuer"). */}}
{{- define "sigil.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sigil.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sigil.issuer.name" -}}
{{- printf "%s-issuer" (include "sigil.fullname" .) }}
{{- end }}

{{- define "sigil.agent.name" -}}
{{- printf "%s-agent" (include "sigil.fullname" .) }}
{{- end }}

{{/* The ConfigMap the issuer keeps current with the trust bundle. */}}
{{- define "sigil.bundle.name" -}}
{{- printf "%s-bundle" (include "sigil.fullname" .) }}
{{- end }}

{{/*
The issuer's replicas and its PostgreSQL settings, defaulted here as well as in
values.yaml: `helm upgrade --reuse-values` takes its defaults from the chart
the release was installed with, which may predate these keys.
*/}}
{{- define "sigil.issuer.replicas" -}}
{{- default 1 .Values.issuer.replicas | int }}
{{- end }}

{{- define "sigil.issuer.postgres.secretKey" -}}
{{- $postgres := default dict .Values.issuer.database.postgres }}
{{- default "url" $postgres.secretKey }}
{{- end }}

{{- define "sigil.issuer.postgres.existingSecret" -}}
{{- $postgres := default dict .Values.issuer.database.postgres }}
{{- default "" $postgres.existingSecret }}
{{- end }}

{{- define "sigil.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Paths inside the containers; the configuration files name the same ones. */}}
{{- define "sigil.issuer.dataDir" -}}/var/lib/sigil/issuer{{- end }}
{{- define "sigil.issuer.adminSocket" -}}/run/sigil/admin/admin.sock{{- end }}
{{- define "sigil.upstreamCA.dir" -}}/etc/sigil/upstream-ca{{- end }}
{{- define "sigil.agent.socketDir" -}}/run/sigil/sockets{{- end }}
{{- define "sigil.agent.dataDir" -}}/var/lib/sigil/agent{{- end }}
{{- define "sigil.agent.bundleDir" -}}/run/sigil/bundle{{- end }}
{{- define "sigil.agent.tokenDir" -}}/var/run/secrets/tokens{{- end }}
{{- define "sigil.agent.tokenFile" -}}sigil-agent{{- end }}
