{{/* Names. */}}
{{- define "msaas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "msaas.fullname" -}}
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

{{- define "msaas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "msaas.labels" -}}
helm.sh/chart: {{ include "msaas.chart" . }}
app.kubernetes.io/name: {{ include "msaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: msaas
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "separate"). */}}
{{- define "msaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "msaas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "msaas.componentLabels" -}}
{{ include "msaas.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "msaas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "msaas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The pipeline's worker stages, in flow order. */}}
{{- define "msaas.stages" -}}decode separate encode{{- end -}}

{{/* Jobs one pod of a stage works on at once: separate holds config.models.inFlight (0: 2 on
GPU, 1 on CPU, as msaas itself defaults), the others one. The worker is started with it
(`--concurrency`) and KEDA's running trigger counts in it, so both agree. */}}
{{- define "msaas.inFlight" -}}
{{- $root := .root -}}
{{- if eq .stage "separate" -}}
{{- $configured := int ($root.Values.config.models.inFlight | default 0) -}}
{{- if gt $configured 0 -}}{{ $configured }}{{- else if $root.Values.gpu.enabled -}}2{{- else -}}1{{- end -}}
{{- else -}}1{{- end -}}
{{- end -}}

{{/* Redis key namespace of msaas (fixed in the binary): streams are <ns>:stage:<stage>. */}}
{{- define "msaas.redisNamespace" -}}msaas{{- end -}}

{{/* Redis endpoint. */}}
{{- define "msaas.redisHost" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s-redis" (include "msaas.fullname" .) -}}
{{- else -}}
{{- required "externalRedis.host is required when redis.enabled=false" .Values.externalRedis.host -}}
{{- end -}}
{{- end -}}

{{/* The Redis host as KEDA (in its own namespace) must name it. */}}
{{- define "msaas.redisHostFromKeda" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s-redis.%s.svc" (include "msaas.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- include "msaas.redisHost" . -}}
{{- end -}}
{{- end -}}

{{- define "msaas.redisPort" -}}
{{- if .Values.redis.enabled -}}6379{{- else -}}{{ .Values.externalRedis.port }}{{- end -}}
{{- end -}}

{{- define "msaas.redisDatabase" -}}
{{- if .Values.redis.enabled -}}0{{- else -}}{{ .Values.externalRedis.database }}{{- end -}}
{{- end -}}

{{- define "msaas.redisTls" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls -}}true{{- end -}}
{{- end -}}

{{/* Secret holding the Redis password; empty: none. */}}
{{- define "msaas.redisSecret" -}}
{{- if .Values.redis.enabled -}}{{ .Values.redis.existingSecret }}{{- else -}}{{ .Values.externalRedis.existingSecret }}{{- end -}}
{{- end -}}

{{- define "msaas.redisPasswordKey" -}}
{{- if .Values.redis.enabled -}}{{ .Values.redis.passwordKey }}{{- else -}}{{ .Values.externalRedis.passwordKey }}{{- end -}}
{{- end -}}

{{/* queue.url; the password is expanded by the kubelet from REDIS_PASSWORD (defined before it). */}}
{{- define "msaas.redisUrl" -}}
{{- $scheme := ternary "rediss" "redis" (eq (include "msaas.redisTls" .) "true") -}}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" (ne (include "msaas.redisSecret" .) "") -}}
{{- printf "%s://%s%s:%s/%s" $scheme $auth (include "msaas.redisHost" .) (include "msaas.redisPort" .) (include "msaas.redisDatabase" .) -}}
{{- end -}}

{{- define "msaas.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s-nats:4222" (include "msaas.fullname" .) -}}
{{- else -}}
{{- .Values.externalNats.url -}}
{{- end -}}
{{- end -}}

{{- define "msaas.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s-minio:9000" (include "msaas.fullname" .) -}}
{{- else -}}
{{- .Values.storage.endpoint -}}
{{- end -}}
{{- end -}}

{{/* Secret names: the one the chart creates when the value is given, else the existing one. */}}
{{- define "msaas.s3Secret" -}}
{{- if and .Values.storage.credentials.accessKeyId .Values.storage.credentials.secretAccessKey -}}
{{- printf "%s-s3-credentials" (include "msaas.fullname" .) -}}
{{- else -}}
{{- .Values.storage.credentials.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "msaas.authSecret" -}}
{{- if .Values.auth.keys -}}
{{- printf "%s-api-keys" (include "msaas.fullname" .) -}}
{{- else -}}
{{- .Values.auth.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "msaas.callbacksSecret" -}}
{{- if .Values.callbacks.secret -}}
{{- printf "%s-callbacks" (include "msaas.fullname" .) -}}
{{- else -}}
{{- .Values.callbacks.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "msaas.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "msaas.cudaImage" -}}
{{- printf "%s:%s" .Values.image.cudaRepository (default .Chart.AppVersion .Values.image.cudaTag) -}}
{{- end -}}

{{/* Env shared by every msaas role (config as MSAAS_SECTION__KEY, backends, secrets by reference). */}}
{{- define "msaas.env" -}}
- name: MSAAS_LOG
  value: {{ .Values.config.logLevel | quote }}
- name: MSAAS_HOME
  value: /opt/msaas
- name: XDG_CACHE_HOME
  value: /var/cache/msaas
- name: MSAAS_MODELS__DEFAULT_MODEL
  value: {{ .Values.config.models.defaultModel | quote }}
{{- if gt (int .Values.config.models.threads) 0 }}
- name: MSAAS_MODELS__THREADS
  value: {{ .Values.config.models.threads | quote }}
{{- end }}
- name: MSAAS_LIMITS__MAX_INPUT_BYTES
  value: {{ .Values.config.limits.maxInputBytes | int64 | quote }}
- name: MSAAS_LIMITS__MAX_DURATION_SECS
  value: {{ .Values.config.limits.maxDurationSecs | quote }}
- name: MSAAS_WORKER__MAX_ATTEMPTS
  value: {{ .Values.config.worker.maxAttempts | quote }}
- name: MSAAS_WORKER__VISIBILITY_TIMEOUT_SECS
  value: {{ .Values.config.worker.visibilityTimeoutSecs | quote }}
- name: MSAAS_WORKER__OUTAGE_BUDGET_SECS
  value: {{ .Values.config.worker.outageBudgetSecs | quote }}
- name: MSAAS_JOBS__RETENTION_SECS
  value: {{ .Values.config.jobs.retentionSecs | quote }}
- name: MSAAS_JOBS__SWEEP_AFTER_SECS
  value: {{ .Values.config.jobs.sweepAfterSecs | quote }}
- name: MSAAS_JOBS__DEDUP
  value: {{ .Values.config.jobs.dedup | quote }}
{{- range $key, $value := .Values.config.extra }}
- name: {{ printf "MSAAS_%s" ($key | replace "." "__" | upper) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- $redisSecret := include "msaas.redisSecret" . }}
{{- if $redisSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $redisSecret }}
      key: {{ include "msaas.redisPasswordKey" . }}
{{- end }}
- name: MSAAS_QUEUE__KIND
  value: redis
- name: MSAAS_QUEUE__URL
  value: {{ include "msaas.redisUrl" . | quote }}
{{- with include "msaas.natsUrl" . }}
- name: MSAAS_EVENTS__NATS_URL
  value: {{ . | quote }}
{{- end }}
- name: MSAAS_STORAGE__KIND
  value: s3
- name: MSAAS_STORAGE__S3__BUCKET
  value: {{ .Values.storage.bucket | quote }}
- name: MSAAS_STORAGE__S3__REGION
  value: {{ .Values.storage.region | quote }}
- name: MSAAS_STORAGE__S3__PREFIX
  value: {{ .Values.storage.prefix | quote }}
- name: MSAAS_STORAGE__S3__PATH_STYLE
  value: {{ .Values.storage.pathStyle | quote }}
{{- with include "msaas.s3Endpoint" . }}
- name: MSAAS_STORAGE__S3__ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: AWS_REGION
  value: {{ .Values.storage.region | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "msaas.s3Secret" . }}
      key: {{ .Values.storage.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "msaas.s3Secret" . }}
      key: {{ .Values.storage.credentials.secretAccessKeyKey }}
{{- with include "msaas.callbacksSecret" . }}
- name: MSAAS_CALLBACKS__SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.callbacks.secretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes every msaas pod has: writable /tmp and cache on a read-only root. */}}
{{- define "msaas.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.cacheSizeLimit }}
{{- end -}}

{{- define "msaas.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /var/cache/msaas
{{- end -}}

{{/* NetworkPolicy pieces: the msaas roles, and where they may connect. */}}
{{- define "msaas.appPodSelector" -}}
matchLabels:
  app.kubernetes.io/name: {{ include "msaas.name" . }}
  app.kubernetes.io/instance: {{ .Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [ingest, decode, separate, encode]
{{- end -}}
{{- define "msaas.appEgress" -}}
{{- $np := .Values.networkPolicy }}
# DNS.
- to:
    - namespaceSelector: {}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- if .Values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "msaas.selectorLabels" (dict "root" . "component" "redis") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 6379}
{{- end }}
{{- if .Values.nats.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "msaas.selectorLabels" (dict "root" . "component" "nats") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 4222}
{{- end }}
{{- if .Values.minio.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "msaas.selectorLabels" (dict "root" . "component" "minio") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 9000}
{{- end }}
{{- if or (not .Values.redis.enabled) (and (not .Values.nats.enabled) .Values.externalNats.url) (not .Values.minio.enabled) }}
# External Redis / NATS / object storage.
- to:
    {{- range $np.externalEgress.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range $np.externalEgress.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- if $np.callbacksEgress.enabled }}
# Webhooks (callback_url): public addresses only.
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        {{- with $np.callbacksEgress.except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
  ports:
    {{- range $np.callbacksEgress.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Models provisioning (values.models): on when anything is to be pulled or imported. */}}
{{- define "msaas.modelsProvisioned" -}}
{{- if or .Values.models.pull .Values.models.import.models -}}true{{- end -}}
{{- end -}}

{{/* Changes whenever what is provisioned changes: names the Job (Jobs are immutable) and the
     marker it leaves, which the consuming pods wait for. */}}
{{- define "msaas.modelsHash" -}}
{{- pick .Values.models "pull" "pullFrom" "legacyFrom" "import" | toJson | sha256sum | trunc 10 -}}
{{- end -}}

{{- define "msaas.modelsClaim" -}}
{{- default (printf "%s-models" (include "msaas.fullname" .)) .Values.models.volume.existingClaim -}}
{{- end -}}

{{- define "msaas.modelsImage" -}}
{{- printf "%s:%s" .Values.models.image.repository (default .Chart.AppVersion .Values.models.image.tag) -}}
{{- end -}}

{{/* What a model-reading pod (ingest, separate) adds: the shared volume, read-only, as
     models.dir, and an init container that waits for the provisioning Job's marker. */}}
{{- define "msaas.modelsEnv" -}}
{{- if include "msaas.modelsProvisioned" . }}
- name: MSAAS_MODELS__DIR
  value: /models
{{- end }}
{{- end -}}

{{- define "msaas.modelsMounts" -}}
{{- if include "msaas.modelsProvisioned" . }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- end -}}

{{- define "msaas.modelsVolumes" -}}
{{- if include "msaas.modelsProvisioned" . }}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "msaas.modelsClaim" . }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "msaas.modelsWait" -}}
{{- if include "msaas.modelsProvisioned" . }}
- name: wait-for-models
  image: {{ include "msaas.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - until [ -f /models/.provisioned-{{ include "msaas.modelsHash" . }} ]; do echo "waiting for the {{ include "msaas.fullname" . }}-models Job"; sleep 5; done
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 32Mi}
  volumeMounts:
    - name: models
      mountPath: /models
      readOnly: true
{{- end }}
{{- end -}}

{{/* What every step of the models Job shares: env, resources, hardening, mounts. */}}
{{- define "msaas.modelsStep" -}}
env:
  - name: MSAAS_LOG
    value: {{ .Values.config.logLevel | quote }}
  - name: MSAAS_HOME
    value: /opt/msaas
  - name: XDG_CACHE_HOME
    value: /var/cache/msaas
  - name: MSAAS_MODELS__DIR
    value: /models
  # Downloads resume from here after a restart of the step.
  - name: MSAAS_MODELS__DOWNLOAD_DIR
    value: /models/.downloads
resources:
  {{- toYaml .Values.models.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: models
    mountPath: /models
  {{- if .Values.models.import.models }}
  - name: import
    mountPath: /import
    readOnly: true
  {{- end }}
  {{- include "msaas.scratchMounts" . | nindent 2 }}
{{- end -}}
