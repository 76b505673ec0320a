{{/* Chart name, possibly overridden. */}}
{{- define "meshgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-based name for the controller, ConfigMaps and RBAC. */}}
{{- define "meshgate.fullname" -}}
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

{{- define "meshgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object, less name/instance (which the selector labels carry). */}}
{{- define "meshgate.commonLabels" -}}
helm.sh/chart: {{ include "meshgate.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshgate
{{- end }}

{{/* Labels of objects that belong to no component. */}}
{{- define "meshgate.labels" -}}
{{ include "meshgate.commonLabels" . }}
app.kubernetes.io/name: {{ include "meshgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of the gateway's objects: common, selector and identity labels. */}}
{{- define "meshgate.gateway.labels" -}}
{{ include "meshgate.commonLabels" . }}
{{ include "meshgate.gateway.selectorLabels" . }}
{{ include "meshgate.gateway.identity" . }}
{{- end }}

{{/* Labels of the controller's objects. */}}
{{- define "meshgate.controller.labels" -}}
{{ include "meshgate.commonLabels" . }}
{{ include "meshgate.controller.selectorLabels" . }}
{{- end }}

{{/*
The gateway instance's identity labels (pods and --labels), as YAML.
gateway.labels replaces the defaults when set; otherwise the Istio pair for ingress or egress.
*/}}
{{- define "meshgate.gateway.identity" -}}
{{- $labels := .Values.gateway.labels }}
{{- if not $labels }}
{{- $labels = ternary (dict "app" "istio-egressgateway" "istio" "egressgateway") (dict "app" "istio-ingressgateway" "istio" "ingressgateway") (.Values.gateway.egress | default false) }}
{{- end }}
{{- toYaml $labels }}
{{- end }}

{{/* The identity labels as the gateway's --labels value: k=v pairs sorted by key. */}}
{{- define "meshgate.gateway.labelsArg" -}}
{{- $labels := include "meshgate.gateway.identity" . | fromYaml }}
{{- $pairs := list }}
{{- range $k := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%v" $k (get $labels $k)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Deployment/Service/ServiceAccount name of the gateway. */}}
{{- define "meshgate.gateway.name" -}}
{{- $labels := include "meshgate.gateway.identity" . | fromYaml }}
{{- $app := get $labels "app" | toString }}
{{- $name := .Values.gateway.name | default $app | default (printf "%s-gateway" (include "meshgate.fullname" .)) }}
{{- $name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector of the gateway pods: stable across label changes, unique per release. */}}
{{- define "meshgate.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "meshgate.gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshgate.gateway.name" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meshgate.gateway.serviceType" -}}
{{- if .Values.service.type }}
{{- .Values.service.type }}
{{- else if .Values.gateway.egress }}
{{- "ClusterIP" }}
{{- else }}
{{- "LoadBalancer" }}
{{- end }}
{{- end }}

{{- define "meshgate.gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* terminationGracePeriodSeconds: explicit, or preStop sleep + drain + 10. */}}
{{- define "meshgate.gateway.terminationGrace" -}}
{{- $drain := int .Values.gateway.drainSeconds }}
{{- $sleep := int .Values.gateway.preStopSleepSeconds }}
{{- if kindIs "invalid" .Values.gateway.terminationGracePeriodSeconds }}
{{- add $sleep $drain 10 }}
{{- else }}
{{- $grace := int .Values.gateway.terminationGracePeriodSeconds }}
{{- if le $grace (add $sleep $drain) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must exceed gateway.preStopSleepSeconds + gateway.drainSeconds (%d)" $grace (add $sleep $drain)) }}
{{- end }}
{{- $grace }}
{{- end }}
{{- end }}

{{/* ConfigMap / Secret holding the file-mode configuration. */}}
{{- define "meshgate.configName" -}}
{{- printf "%s-config" (include "meshgate.gateway.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Renders a config map's values: strings as written, maps as one YAML document. */}}
{{- define "meshgate.configFiles" -}}
{{- range $file, $content := . }}
{{ $file | quote }}: |
{{- if kindIs "string" $content }}
{{ $content | trimSuffix "\n" | indent 2 }}
{{- else }}
{{ toYaml $content | trimSuffix "\n" | indent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Controller names. */}}
{{- define "meshgate.controller.name" -}}
{{- printf "%s-controller" (include "meshgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshgate.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "meshgate.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "meshgate.controller.name" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meshgate.controller.image" -}}
{{- printf "%s:%s" .Values.controller.image.repository (.Values.controller.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* RBAC rules: what the kube source reads everywhere it watches; read-only. */}}
{{- define "meshgate.controller.readRules" -}}
- apiGroups: ["networking.istio.io"]
  resources: ["gateways", "virtualservices", "destinationrules", "serviceentries", "workloadentries"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["services", "pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
The mode the gateway runs in, from the values; contradictions fail here, before anything renders:
  controller  controller.enabled: a controller Deployment, gateways run --controller URL
  kube        gateway.kube: the gateway reads the API itself (embedded controller)
  files       neither: the gateway reads `config` / `configSecrets` files
*/}}
{{- define "meshgate.mode" -}}
{{- $v := .Values }}
{{- $fileValues := list }}
{{- if $v.config }}{{ $fileValues = append $fileValues "config" }}{{ end }}
{{- if $v.configSecrets }}{{ $fileValues = append $fileValues "configSecrets" }}{{ end }}
{{- if $v.gateway.extraConfigPaths }}{{ $fileValues = append $fileValues "gateway.extraConfigPaths" }}{{ end }}
{{- if and $v.controller.enabled $v.gateway.kube }}
{{- fail "controller.enabled and gateway.kube contradict each other: the gateway either follows the controller (--controller) or reads the Kubernetes API itself (--kube). Set controller.enabled=false for the embedded mode." }}
{{- else if $v.controller.enabled }}
{{- if $fileValues }}
{{- fail (printf "%s: file mode only, but controller.enabled is true (the gateway takes its configuration from the controller; --config conflicts with --controller). Apply the YAML to the cluster instead, or set controller.enabled=false for file mode." (join ", " $fileValues)) }}
{{- end }}
{{- "controller" }}
{{- else if $v.gateway.kube }}
{{- if $fileValues }}
{{- fail (printf "%s: file mode only, but gateway.kube is true (--config conflicts with --kube). Apply the YAML to the cluster instead, or set gateway.kube=false for file mode." (join ", " $fileValues)) }}
{{- end }}
{{- "kube" }}
{{- else }}
{{- "files" }}
{{- end }}
{{- end }}

{{/* Namespaces the Kubernetes source watches (empty: all), for the active mode. */}}
{{- define "meshgate.watchNamespaces" -}}
{{- $mode := include "meshgate.mode" . }}
{{- if eq $mode "controller" }}
{{- toJson (.Values.controller.watchNamespaces | default list) }}
{{- else if eq $mode "kube" }}
{{- toJson (.Values.gateway.watchNamespaces | default list) }}
{{- else }}
{{- toJson list }}
{{- end }}
{{- end }}

{{/* The Secret holding the controller token (key `token`). */}}
{{- define "meshgate.tokenSecretName" -}}
{{- .Values.controller.tokenSecret.existingSecret | default (printf "%s-token" (include "meshgate.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{/* Where the token Secret is mounted in the controller and gateway pods. */}}
{{- define "meshgate.tokenDir" -}}
/var/run/meshgate/token
{{- end }}

{{/* The controller's in-cluster URL, for `gateway --controller`. */}}
{{- define "meshgate.controller.url" -}}
{{- printf "http://%s.%s.svc:%v" (include "meshgate.controller.name" .) .Release.Namespace .Values.controller.port }}
{{- end }}
