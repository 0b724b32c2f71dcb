{{- define "openft.fullname" -}}{{ .Release.Name }}-openft{{- end -}}
{{- define "openft.labels" -}}
app.kubernetes.io/name: openft
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "openft.env" -}}
- name: OPENFT_S3_ENDPOINT_URL
  value: {{ .Values.s3.endpointUrl | quote }}
- name: OPENFT_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: OPENFT_S3_ACCESS_KEY
  value: {{ .Values.s3.accessKey | quote }}
- name: AWS_ACCESS_KEY_ID
  value: {{ .Values.s3.accessKey | quote }}
- name: AWS_ENDPOINT_URL
  value: {{ .Values.s3.endpointUrl | quote }}
- name: OPENFT_RAY_ADDRESS
  value: "http://{{ include "openft.fullname" . }}-ray-head-svc:8265"
- name: OPENFT_SERVING_URL
  value: "http://{{ include "openft.fullname" . }}-ray-head-svc:8000"
- name: OPENFT_DEFAULT_BASE_MODEL
  value: "true"
- name: OPENFT_MODEL_CACHE_DIR
  value: /tmp/openft-models
{{- /* The serving knobs (contract/serving.py) come from serving.config, the one place the
  chart sets them: the API's limits (max_model_len, max_lora_rank) then match serving's. */}}
{{- range $key, $value := .Values.serving.config }}
{{- if not (has $key (list "base_models" "s3_bucket" "adapters_prefix")) }}
- name: OPENFT_SERVING_{{ $key | upper }}
  value: {{ if kindIs "map" $value }}{{ $value | toJson | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}
