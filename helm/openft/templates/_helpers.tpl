{{/* Names, labels and the pieces several templates share. */}}

{{- define "openft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: the release name if it already holds the chart's name, else
<release>-openft; fullnameOverride wins. 63 characters at most (a DNS label). */}}
{{- define "openft.fullname" -}}
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

{{/* Names derived from fullname, each kept within 63 characters. */}}
{{- define "openft.componentName" -}}
{{- $root := index . 0 -}}{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "openft.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}
{{- define "openft.apiName" -}}{{ include "openft.componentName" (list . "api") }}{{- end -}}
{{- define "openft.rayName" -}}{{ include "openft.componentName" (list . "ray") }}{{- end -}}
{{/* Set on the RayCluster (headService.metadata.name) rather than left to KubeRay, which
cuts long generated names from the front. */}}
{{- define "openft.rayHeadService" -}}{{ include "openft.componentName" (list . "ray-head-svc") }}{{- end -}}
{{- define "openft.postgresqlName" -}}{{ include "openft.componentName" (list . "postgresql") }}{{- end -}}
{{- define "openft.seaweedfsName" -}}{{ include "openft.componentName" (list . "seaweedfs") }}{{- end -}}

{{- define "openft.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Every object's labels; pass (dict "root" $ "component" "api"). */}}
{{- define "openft.labels" -}}
helm.sh/chart: {{ include "openft.chart" .root }}
{{ include "openft.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: openft
{{- end -}}

{{- define "openft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openft.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* The labels every pod of this release carries: what the NetworkPolicies admit. */}}
{{- define "openft.releasePodSelector" -}}
app.kubernetes.io/name: {{ include "openft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "openft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "openft.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "openft.image" -}}
{{- $image := index . 0 -}}{{- $root := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "openft.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod Security "restricted": pod and container halves. */}}
{{- define "openft.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "openft.containerSecurityContext" -}}
allowPrivilegeEscalation: false
runAsNonRoot: true
readOnlyRootFilesystem: {{ . }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* ---- Where the data lives: external by default, bundled for an evaluation install ---- */}}

{{- define "openft.databaseSecret" -}}
{{- if .Values.evaluation.enabled -}}{{ include "openft.postgresqlName" . }}{{- else -}}{{ .Values.database.existingSecret }}{{- end -}}
{{- end -}}
{{- define "openft.databaseUrlKey" -}}
{{- if .Values.evaluation.enabled -}}database-url{{- else -}}{{ .Values.database.urlKey }}{{- end -}}
{{- end -}}

{{- define "openft.s3Secret" -}}
{{- if .Values.evaluation.enabled -}}{{ include "openft.seaweedfsName" . }}{{- else -}}{{ .Values.s3.existingSecret }}{{- end -}}
{{- end -}}
{{- define "openft.s3AccessKeyIdKey" -}}
{{- if .Values.evaluation.enabled -}}access-key-id{{- else -}}{{ .Values.s3.accessKeyIdKey }}{{- end -}}
{{- end -}}
{{- define "openft.s3SecretAccessKeyKey" -}}
{{- if .Values.evaluation.enabled -}}secret-access-key{{- else -}}{{ .Values.s3.secretAccessKeyKey }}{{- end -}}
{{- end -}}
{{- define "openft.s3UsesSecret" -}}
{{- if or .Values.evaluation.enabled (eq .Values.s3.credentials "secret") -}}true{{- end -}}
{{- end -}}
{{- define "openft.s3Endpoint" -}}
{{- if .Values.evaluation.enabled -}}http://{{ include "openft.seaweedfsName" . }}:8333{{- else -}}{{ .Values.s3.endpointUrl }}{{- end -}}
{{- end -}}

{{- define "openft.apiKeysSecret" -}}
{{- default (include "openft.componentName" (list . "api-keys")) .Values.api.existingSecret -}}
{{- end -}}
{{- define "openft.rayAuthSecret" -}}
{{- default (include "openft.componentName" (list . "ray-auth")) .Values.ray.auth.existingSecret -}}
{{- end -}}
{{- define "openft.servingTokenSecret" -}}
{{- default (include "openft.componentName" (list . "serving-token")) .Values.serving.token.existingSecret -}}
{{- end -}}

{{/* The refusals: render nothing that could not work. Included by every workload template. */}}
{{- define "openft.validate" -}}
{{- if .Values.evaluation.enabled -}}
{{- if .Values.database.existingSecret -}}
{{- fail "evaluation.enabled bundles its own PostgreSQL: leave database.existingSecret empty (or turn evaluation off to use your database)" -}}
{{- end -}}
{{- if .Values.s3.existingSecret -}}
{{- fail "evaluation.enabled bundles its own S3 (SeaweedFS): leave s3.existingSecret empty (or turn evaluation off to use your bucket)" -}}
{{- end -}}
{{- else -}}
{{- if not .Values.database.existingSecret -}}
{{- fail "database.existingSecret is required: openft keeps its jobs in PostgreSQL, never in a per-pod SQLite file. Create a Secret whose key database.urlKey (default database-url) holds postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB, or set evaluation.enabled=true for a trial install with a bundled PostgreSQL and SeaweedFS" -}}
{{- end -}}
{{- if and (eq .Values.s3.credentials "secret") (not .Values.s3.existingSecret) -}}
{{- fail "s3.existingSecret is required with s3.credentials=secret (keys s3.accessKeyIdKey and s3.secretAccessKeyKey); use s3.credentials=ambient for an IAM role or workload identity" -}}
{{- end -}}
{{- end -}}
{{- if not .Values.models.base -}}
{{- fail "models.base must list at least one base model: serving needs one to start" -}}
{{- end -}}
{{- $ids := list -}}
{{- range .Values.models.base -}}
{{- if has .id $ids -}}{{- fail (printf "models.base: id %q is listed twice" .id) -}}{{- end -}}
{{- $ids = append $ids .id -}}
{{- if .volume_path -}}
{{- if not $.Values.models.volume.claimName -}}
{{- fail (printf "models.base %q has a volume_path: set models.volume.claimName to the PVC that holds it" .id) -}}
{{- end -}}
{{- if not (hasPrefix (printf "%s/" (trimSuffix "/" $.Values.models.volume.mountPath)) .volume_path) -}}
{{- fail (printf "models.base %q: volume_path %s is not under models.volume.mountPath %s" .id .volume_path $.Values.models.volume.mountPath) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range .Values.ray.workerGroups -}}
{{- if gt (int .minReplicas) (int .replicas) -}}{{- fail (printf "ray.workerGroups %q: minReplicas exceeds replicas" .name) -}}{{- end -}}
{{- if gt (int .replicas) (int .maxReplicas) -}}{{- fail (printf "ray.workerGroups %q: replicas exceeds maxReplicas" .name) -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* ---- Base models and the serving config: one list in values, two shapes ---- */}}

{{/* OPENFT_BASE_MODELS: {"id": {BaseModelConfig...}} */}}
{{- define "openft.baseModelsJson" -}}
{{- $models := dict -}}
{{- range .Values.models.base -}}
{{- $_ := set $models .id (omit . "id") -}}
{{- end -}}
{{- $models | toJson -}}
{{- end -}}

{{/* serving.deploy's ServingConfig: the knobs, where Serve listens on the Ray pods (port 8000,
the head's serve port), the base models and the bucket. */}}
{{- define "openft.servingConfigJson" -}}
{{- $config := dict -}}
{{- range $key, $value := .Values.serving.config -}}
{{- if not (kindIs "invalid" $value) -}}{{- $_ := set $config $key $value -}}{{- end -}}
{{- end -}}
{{- $_ := set $config "host" "0.0.0.0" -}}
{{- $_ := set $config "port" 8000 -}}
{{- $_ := set $config "s3_bucket" (include "openft.s3Bucket" .) -}}
{{- $models := list -}}
{{- range .Values.models.base -}}{{- $models = append $models . -}}{{- end -}}
{{- $_ := set $config "base_models" $models -}}
{{- $config | toJson -}}
{{- end -}}

{{- define "openft.s3Bucket" -}}
{{- if .Values.evaluation.enabled -}}{{ .Values.evaluation.seaweedfs.bucket }}{{- else -}}{{ .Values.s3.bucket }}{{- end -}}
{{- end -}}

{{/* ---- Environment ---- */}}

{{- define "openft.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ .key | quote }}
{{- end -}}

{{/* OPENFT_SERVING_TOKEN (contract/serving.py SERVING_TOKEN_ENV): the API sends it to serving;
serving.deploy (the hook Job, the keeper) deploys with its SHA-256. Never in a Ray container. */}}
{{- define "openft.servingTokenEnv" -}}
{{ include "openft.secretEnv" (dict "name" "OPENFT_SERVING_TOKEN" "secret" (include "openft.servingTokenSecret" .) "key" .Values.serving.token.key) }}
{{- end -}}

{{/* The bucket's endpoint and region, as OPENFT_S3_* (the API) or AWS_* (Ray nodes). */}}
{{- define "openft.apiS3Env" -}}
{{- $endpoint := include "openft.s3Endpoint" . -}}
{{- if $endpoint }}
- name: OPENFT_S3_ENDPOINT_URL
  value: {{ $endpoint | quote }}
{{- end }}
- name: OPENFT_S3_BUCKET
  value: {{ include "openft.s3Bucket" . | quote }}
- name: OPENFT_S3_REGION
  value: {{ .Values.s3.region | quote }}
{{- if include "openft.s3UsesSecret" . }}
{{ include "openft.secretEnv" (dict "name" "OPENFT_S3_ACCESS_KEY" "secret" (include "openft.s3Secret" .) "key" (include "openft.s3AccessKeyIdKey" .)) }}
{{ include "openft.secretEnv" (dict "name" "OPENFT_S3_SECRET_KEY" "secret" (include "openft.s3Secret" .) "key" (include "openft.s3SecretAccessKeyKey" .)) }}
{{- end }}
{{- end -}}

{{- define "openft.rayS3Env" -}}
{{- $endpoint := include "openft.s3Endpoint" . -}}
{{- if include "openft.s3UsesSecret" . }}
{{ include "openft.secretEnv" (dict "name" "AWS_ACCESS_KEY_ID" "secret" (include "openft.s3Secret" .) "key" (include "openft.s3AccessKeyIdKey" .)) }}
{{ include "openft.secretEnv" (dict "name" "AWS_SECRET_ACCESS_KEY" "secret" (include "openft.s3Secret" .) "key" (include "openft.s3SecretAccessKeyKey" .)) }}
{{- end }}
{{- if $endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ $endpoint | quote }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ $endpoint | quote }}
{{- end }}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- end -}}

{{/* Everything the API process reads (service/settings.py), and nothing it does not. */}}
{{- define "openft.apiEnv" -}}
- name: OPENFT_DATA_DIR
  value: "/var/lib/openft"
{{ include "openft.secretEnv" (dict "name" "OPENFT_DATABASE_URL" "secret" (include "openft.databaseSecret" .) "key" (include "openft.databaseUrlKey" .)) }}
- name: OPENFT_MIGRATE_ON_START
  value: "false"
{{ include "openft.secretEnv" (dict "name" "OPENFT_API_KEYS" "secret" (include "openft.apiKeysSecret" .) "key" .Values.api.keysKey) }}
{{- include "openft.apiS3Env" . }}
- name: OPENFT_RAY_ADDRESS
  value: "http://{{ include "openft.rayHeadService" . }}:8265"
- name: OPENFT_SERVING_URL
  value: "http://{{ include "openft.rayHeadService" . }}:8000"
{{ include "openft.secretEnv" (dict "name" "OPENFT_RAY_AUTH_TOKEN" "secret" (include "openft.rayAuthSecret" .) "key" "auth_token") }}
{{ include "openft.servingTokenEnv" . }}
- name: OPENFT_TRAINING_S3_CREDENTIALS
  value: "node"
- name: OPENFT_DEFAULT_BASE_MODEL
  value: "false"
- name: OPENFT_BASE_MODELS
  value: {{ include "openft.baseModelsJson" . | quote }}
{{- range $key, $value := .Values.serving.config }}
{{- if not (kindIs "invalid" $value) }}
- name: OPENFT_SERVING_{{ $key | upper }}
  value: {{ if kindIs "map" $value }}{{ $value | toJson | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}
{{- end }}
{{- with .Values.api.webhookSecret.existingSecret }}
{{ include "openft.secretEnv" (dict "name" "OPENFT_WEBHOOK_SECRET" "secret" . "key" $.Values.api.webhookSecret.key) }}
{{- end }}
{{- range $name, $value := .Values.api.settings }}
- name: {{ $name }}
  value: {{ if or (kindIs "map" $value) (kindIs "slice" $value) }}{{ $value | toJson | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}
{{- end -}}

{{/* Every Ray container (head and workers): the bucket's credentials belong to the node, so
no secret travels in a Ray job's runtime_env. RAY_AUTH_MODE and RAY_AUTH_TOKEN are KubeRay's
to inject (spec.authOptions). The serving token is not here: serving checks its digest, which
arrives in the Serve config. */}}
{{- define "openft.rayEnv" -}}
{{- include "openft.rayS3Env" . }}
- name: OPENFT_MODEL_CACHE_DIR
  value: {{ .Values.ray.modelCacheMountPath | quote }}
{{- /* vLLM's CPU build sizes its KV cache from this (whole GiB) before the engine's own
  kv_cache_memory_bytes applies; the CUDA build ignores it. */}}
- name: VLLM_CPU_KVCACHE_SPACE
  value: {{ .Values.serving.config.kv_cache_gib | default 1 | float64 | ceil | int | quote }}
{{- end -}}

{{/* ---- Volumes ---- */}}

{{- define "openft.modelsVolume" -}}
{{- if .Values.models.volume.claimName }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.models.volume.claimName }}
    readOnly: true
{{- end }}
{{- end -}}
{{- define "openft.modelsVolumeMount" -}}
{{- if .Values.models.volume.claimName }}
- name: models
  mountPath: {{ .Values.models.volume.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* A Ray pod's node-local base model cache: pass (dict "root" $ "cache" .modelCache "group" name). */}}
{{- define "openft.modelCacheVolume" -}}
{{- $cache := .cache -}}
- name: model-cache
{{- if eq $cache.type "emptyDir" }}
  emptyDir:
    sizeLimit: {{ $cache.size }}
{{- else if eq $cache.type "ephemeral" }}
  ephemeral:
    volumeClaimTemplate:
      metadata:
        labels: {{- include "openft.selectorLabels" (dict "root" .root "component" "model-cache") | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with $cache.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $cache.size }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ required (printf "ray %s: modelCache.claimName is required with type persistentVolumeClaim" .group) $cache.claimName }}
{{- end }}
{{- end -}}

{{- define "openft.checksum.api" -}}
{{- list (include "openft.apiEnv" .) (omit .Values.api "replicas" "podDisruptionBudget" "ingress" "service") .Values.image.api .Values.models.volume .Values.securityContext | toJson | sha256sum -}}
{{- end -}}
{{/* What a Ray pod is made of, less the replica counts (scaling must not recreate the
cluster) and the base model list (the serving hook redeploys for that). */}}
{{- define "openft.checksum.ray" -}}
{{- $groups := list -}}
{{- range .Values.ray.workerGroups -}}{{- $groups = append $groups (omit . "replicas" "minReplicas" "maxReplicas") -}}{{- end -}}
{{- list (include "openft.rayEnv" .) (omit .Values.ray "workerGroups") $groups .Values.image.ray .Values.models.volume .Values.securityContext .Values.imagePullSecrets | toJson | sha256sum -}}
{{- end -}}
