{{/* Names and labels. */}}
{{- define "chatweb.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chatweb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: chatweb
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "chatweb.selector" (list $ "auth") */}}
{{- define "chatweb.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: chatweb
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "chatweb.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding RPC_SECRET, DB, REDIS_URL, OPENAI_KEY, OPS_KEY, BASIC_AUTH_PASSWORD. */}}
{{- define "chatweb.secretName" -}}
{{- default (include "chatweb.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The Secret of the in-cluster stores (REDIS_URL, DB and their passwords). */}}
{{- define "chatweb.storesSecretName" -}}
{{- printf "%s-stores" (include "chatweb.fullname" .) -}}
{{- end -}}

{{/*
A value given in values.yaml, else the one already in the named Secret (so a generated value
survives upgrades), else a new random one: include "chatweb.keep" (list $ secretName key given)
*/}}
{{- define "chatweb.keep" -}}
{{- $ := index . 0 -}}
{{- $given := index . 3 -}}
{{- if $given -}}
{{- $given -}}
{{- else -}}
{{- $old := lookup "v1" "Secret" $.Release.Namespace (index . 1) -}}
{{- if and $old (hasKey $old.data (index . 2)) -}}
{{- index $old.data (index . 2) | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Where each service's secret keys come from: the stores Secret for in-cluster stores. */}}
{{- define "chatweb.secretRef" -}}
{{- $ := index . 0 -}}
{{- $key := index . 1 -}}
{{- $name := include "chatweb.secretName" $ -}}
{{- if and (eq $key "REDIS_URL") $.Values.redis.internal.enabled -}}
{{- $name = include "chatweb.storesSecretName" $ -}}
{{- else if and (eq $key "DB") $.Values.mysql.internal.enabled -}}
{{- $name = include "chatweb.storesSecretName" $ -}}
{{- end -}}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $key }}
      {{- if has $key (list "OPENAI_KEY" "OPS_KEY" "BASIC_AUTH_PASSWORD") }}
      optional: true
      {{- end }}
{{- end -}}

{{- define "chatweb.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "chatweb.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The secret keys each service reads. */}}
{{- define "chatweb.secretKeys" -}}
{{- $keys := dict
  "auth" (list "RPC_SECRET" "REDIS_URL" "DB" "OPS_KEY" "BASIC_AUTH_PASSWORD")
  "billing" (list "RPC_SECRET" "REDIS_URL" "DB")
  "chat" (list "RPC_SECRET" "REDIS_URL" "OPENAI_KEY")
  "proxy" (list "RPC_SECRET" "REDIS_URL" "OPENAI_KEY") -}}
{{- index $keys . | join "," -}}
{{- end -}}

{{- define "chatweb.graceSeconds" -}}
{{- add .Values.preStopSeconds .Values.drainTimeout 10 -}}
{{- end -}}

{{/* Fails the render when a required secret cannot be found anywhere. */}}
{{- define "chatweb.checkSecrets" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- if and (not .Values.secrets.db) (not .Values.mysql.internal.enabled) -}}
{{- fail "secrets.db (DB=mysql://user:pass@host:3306/db) is required, or secrets.existingSecret, or mysql.internal.enabled=true for a trial" -}}
{{- end -}}
{{- if and (not .Values.secrets.redisUrl) (not .Values.redis.internal.enabled) -}}
{{- fail "secrets.redisUrl (REDIS_URL=redis://:pass@host:6379/0) is required, or secrets.existingSecret, or redis.internal.enabled=true for a trial" -}}
{{- end -}}
{{- end -}}
{{- end -}}
