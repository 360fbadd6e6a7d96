{{/* Chart name. */}}
{{- define "outbox-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "outbox-relay.fullname" -}}
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

{{- define "outbox-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "outbox-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "outbox-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outbox-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "outbox-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "outbox-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "outbox-relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret holding the database URL (existing or chart-created). */}}
{{- define "outbox-relay.databaseSecret" -}}
{{- default (printf "%s-secrets" (include "outbox-relay.fullname" .)) .Values.database.existingSecret }}
{{- end }}
{{- define "outbox-relay.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{- define "outbox-relay.rabbitmqSecret" -}}
{{- default (printf "%s-secrets" (include "outbox-relay.fullname" .)) .Values.rabbitmq.existingSecret }}
{{- end }}
{{- define "outbox-relay.rabbitmqSecretKey" -}}
{{- if .Values.rabbitmq.existingSecret }}{{ .Values.rabbitmq.existingSecretKey }}{{ else }}rabbitmq-url{{ end }}
{{- end }}

{{/* Validations that fail the render with a message naming the value. */}}
{{- define "outbox-relay.validate" -}}
{{- if not (or .Values.database.existingSecret .Values.database.url) }}
{{- fail "set database.existingSecret (recommended) or database.url" }}
{{- end }}
{{- if eq .Values.broker.kind "rabbitmq" }}
{{- if not (or .Values.rabbitmq.existingSecret .Values.rabbitmq.url) }}
{{- fail "broker.kind=rabbitmq: set rabbitmq.existingSecret (recommended) or rabbitmq.url" }}
{{- end }}
{{- else if eq .Values.broker.kind "sqs" }}
{{- if not .Values.config.sqs.queueUrl }}
{{- fail "broker.kind=sqs: set config.sqs.queueUrl" }}
{{- end }}
{{- else }}
{{- fail "broker.kind must be rabbitmq or sqs" }}
{{- end }}
{{- end }}

{{/* Environment shared by the relay and the migration job: secrets only. */}}
{{- define "outbox-relay.secretEnv" -}}
- name: OUTBOX_RELAY_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "outbox-relay.databaseSecret" . }}
      key: {{ include "outbox-relay.databaseSecretKey" . }}
{{- if eq .Values.broker.kind "rabbitmq" }}
- name: OUTBOX_RELAY_BROKER__RABBITMQ__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "outbox-relay.rabbitmqSecret" . }}
      key: {{ include "outbox-relay.rabbitmqSecretKey" . }}
{{- end }}
{{- end }}

{{/* config.toml: non-secret settings only. */}}
{{- define "outbox-relay.configToml" -}}
{{- $c := .Values.config -}}
[database]
table = {{ $c.database.table | quote }}
pool_size = {{ int $c.database.poolSize }}
{{- if .Values.database.passwordSecret }}
password_file = "/var/run/secrets/outbox-relay/database/password"
{{- end }}

[relay]
mode = {{ $c.relay.mode | quote }}
poll_interval = {{ $c.relay.pollInterval | quote }}
batch_size = {{ int $c.relay.batchSize }}
max_in_flight = {{ int $c.relay.maxInFlight }}
publish_channels = {{ int $c.relay.publishChannels }}
max_pending_in_memory = {{ int $c.relay.maxPendingInMemory }}
shutdown_timeout = {{ $c.relay.shutdownTimeout | quote }}
buckets = {{ int $c.relay.buckets }}

[retry]
initial_backoff = {{ $c.retry.initialBackoff | quote }}
max_backoff = {{ $c.retry.maxBackoff | quote }}
max_attempts = {{ int $c.retry.maxAttempts }}

[broker]
kind = {{ .Values.broker.kind | quote }}

[broker.rabbitmq]
exchange = {{ $c.rabbitmq.exchange | quote }}
routing_key = {{ $c.rabbitmq.routingKey | quote }}

[broker.sqs]
queue_url = {{ $c.sqs.queueUrl | quote }}
{{- if $c.sqs.region }}
region = {{ $c.sqs.region | quote }}
{{- end }}
{{- if $c.sqs.endpointUrl }}
endpoint_url = {{ $c.sqs.endpointUrl | quote }}
{{- end }}

[metrics]
listen = "0.0.0.0:{{ int .Values.service.port }}"

[retention]
dispatched = {{ $c.retention.dispatched | quote }}

[log]
format = {{ $c.log.format | quote }}
level = {{ $c.log.level | quote }}
{{- end }}
