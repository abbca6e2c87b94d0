{{/* Names, labels, the tenant's namespace selectors and the chart-generated certificates. */}}

{{- define "tenant.name" -}}
{{- required "tenant is required: the tenant's name as the tenancy rule yields it" .Values.tenant }}
{{- end }}

{{/* Prefix of every cluster-scoped object: two tenants' releases never share a name, and a second
release for the same tenant fails instead of running a second KEDA for it. */}}
{{- define "tenant.prefix" -}}
keda-tenancy-{{ include "tenant.name" . }}
{{- end }}

{{- define "tenant.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keda-tenancy
keda-tenancy.io/tenant: {{ include "tenant.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "tenant.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tenant.componentLabels" -}}
{{ include "tenant.labels" .ctx }}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tenant.image" -}}
{{- $img := index .ctx.Values.images .image }}
{{- printf "%s:%s" $img.repository (include "tenant.imageTag" .) }}
{{- end }}

{{/* An image's tag: explicit, else from keda.version (the tenant image: <tagPrefix>-keda<version>). */}}
{{- define "tenant.imageTag" -}}
{{- $img := index .ctx.Values.images .image }}
{{- if $img.tag }}{{ $img.tag }}
{{- else if eq .image "tenant" }}{{ default .ctx.Chart.AppVersion $img.tagPrefix }}-keda{{ trimPrefix "v" .ctx.Values.keda.version }}
{{- else }}{{ trimPrefix "v" .ctx.Values.keda.version }}
{{- end }}
{{- end }}

{{/* The KEDA version an image runs, read from its tag ("" when the tag names none). */}}
{{- define "tenant.imageKedaVersion" -}}
{{- $tag := include "tenant.imageTag" . }}
{{- if eq .image "tenant" }}
{{- $found := regexFind "-kedav?[0-9]+[.][0-9]+[.][0-9]+([-+][0-9A-Za-z.-]+)?$" $tag }}
{{- if $found }}{{ trimPrefix "v" (trimPrefix "-keda" $found) }}{{ end }}
{{- else }}{{ trimPrefix "v" $tag }}
{{- end }}
{{- end }}

{{- define "tenant.leaderElectionId" -}}
{{ include "tenant.name" . }}.operator.keda-tenancy.io
{{- end }}

{{- define "tenant.webhookConfigName" -}}
{{ include "tenant.prefix" . }}-admission
{{- end }}

{{- define "tenant.usesHnc" -}}
{{- if or .Values.tenancy.hnc.roots .Values.tenancy.hnc.rootLabel }}true{{ end }}
{{- end }}

{{/*
The label selectors (JSON list of LabelSelector) that pick the tenant's namespaces: the explicit
tenantNamespaceSelectors, else one per label key (value = tenant) plus the HNC tree label
<tenant>.tree.hnc.x-k8s.io/depth. Empty when the rule is only a name pattern.
*/}}
{{- define "tenant.namespaceSelectors" -}}
{{- $tenant := include "tenant.name" . }}
{{- $out := list }}
{{- if .Values.tenantNamespaceSelectors }}
{{- $out = .Values.tenantNamespaceSelectors }}
{{- else }}
{{- range .Values.tenancy.labelKeys }}
{{- $out = append $out (dict "matchLabels" (dict . $tenant)) }}
{{- end }}
{{- if include "tenant.usesHnc" . }}
{{- $out = append $out (dict "matchExpressions" (list (dict "key" (printf "%s.tree.hnc.x-k8s.io/depth" $tenant) "operator" "Exists"))) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "tenant.requiredNamespaceSelectors" -}}
{{- $sel := include "tenant.namespaceSelectors" .ctx | fromJsonArray }}
{{- if not $sel }}
{{- fail (printf "%s needs the tenant's namespaces as label selectors, and a name-pattern rule has none: set tenantNamespaceSelectors" .what) }}
{{- end }}
{{- toJson $sel }}
{{- end }}

{{/* The operator's RBAC scope, "auto" resolved. */}}
{{- define "tenant.rbacScope" -}}
{{- $scope := .Values.rbac.scope }}
{{- if eq $scope "auto" }}
{{- /* RoleBindings that follow the namespaces, whatever the tenancy rule; an explicit
rbac.namespaces list is honoured. hnc, external and cluster are only ever chosen explicitly. */}}
{{- if .Values.rbac.namespaces }}namespaces{{ else }}follow{{ end }}
{{- else }}
{{- $scope }}
{{- end }}
{{- end }}

{{/* The ServiceAccounts that run a reloader, so evaluate the tenancy rule (JSON list). */}}
{{- define "tenant.ruleReaders" -}}
{{- $out := list }}
{{- if include "tenant.platform" . }}
{{- /* The platform controller reads the rule; nothing here does. */}}
{{- else if eq .Values.reloader.mode "deployment" }}
{{- $out = append $out "keda-namespace-reloader" }}
{{- else }}
{{- $out = append $out "keda-operator" }}
{{- if eq (include "tenant.rbacScope" .) "follow" }}
{{- $out = append $out "keda-rolebinding-manager" }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The tenancy rule's source and the selection as reloader flags (YAML list items). */}}
{{- define "tenant.reloaderArgs" -}}
- --tenant={{ include "tenant.name" . }}
{{- /* The rule is the router's published one, never a copy in this release. */}}
- --tenancy-rule-configmap={{ .Values.router.namespace }}/{{ .Values.router.tenancyRule }}
- --debounce={{ .Values.reloader.debounce }}
- --max-wait={{ .Values.reloader.maxWait }}
- --min-restart-interval={{ .Values.reloader.minRestartInterval }}
- --removal-delay={{ .Values.reloader.removalDelay }}
- --grace-period={{ .Values.reloader.gracePeriod }}
- --max-restarts={{ .Values.reloader.maxRestarts }}
- --log-level={{ .Values.reloader.logLevel }}
{{- range .Values.reloader.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Who manages the follow-scope RoleBindings: never the operator's own ServiceAccount. */}}
{{- define "tenant.bindingManagerSA" -}}
{{- if eq .Values.reloader.mode "deployment" }}keda-namespace-reloader{{ else }}keda-rolebinding-manager{{ end }}
{{- end }}

{{/* The binding manager's flags (follow scope; YAML list items). */}}
{{- define "tenant.bindingArgs" -}}
- --bind-cluster-role={{ include "tenant.prefix" . }}-operator
- --bind-service-account={{ .Release.Namespace }}/keda-operator
- --unbind-timeout={{ .Values.reloader.unbindTimeout }}
{{- end }}

{{/* KEDA operator flags: patching of the APIService and webhooks off, certificates from us. */}}
{{- define "tenant.operatorArgs" -}}
- --leader-elect
- --leader-election-id={{ include "tenant.leaderElectionId" . }}
- --zap-log-level={{ .Values.operator.logLevel }}
- --zap-encoder={{ .Values.operator.logFormat }}
- --zap-time-encoding=rfc3339
- --cert-dir=/certs
- --enable-cert-rotation=false
- --enable-apiservice-patching=false
- --enable-webhook-patching=false
- --cert-secret-name={{ .Values.certificates.secretName }}
- --operator-service-name=keda-operator
- --metrics-server-service-name=keda-operator-metrics-apiserver
- --webhooks-service-name=keda-admission-webhooks
- --validating-webhook-name={{ include "tenant.webhookConfigName" . }}
- --k8s-cluster-domain={{ .Values.clusterDomain }}
- --metrics-bind-address=:8080
- --health-probe-bind-address=:8081
{{- range .Values.operator.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "tenant.operatorEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OPERATOR_NAME
  value: keda-operator
- name: KEDA_CLUSTER_OBJECT_NAMESPACE
  value: {{ .Release.Namespace }}
- name: KEDA_HTTP_DEFAULT_TIMEOUT
  value: {{ .Values.operator.httpTimeoutMs | quote }}
{{- with .Values.operator.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tenant.internalDnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- $out := list }}
{{- range list "keda-operator" "keda-operator-metrics-apiserver" "keda-admission-webhooks" }}
{{- $out = concat $out (list . (printf "%s.%s" . $ns) (printf "%s.%s.svc" . $ns) (printf "%s.%s.svc.%s" . $ns $.Values.clusterDomain)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "tenant.metricsServerDnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- $svc := "keda-operator-metrics-apiserver" }}
{{- list (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) (printf "%s.%s" $svc $ns) | toJson }}
{{- end }}

{{/* A LabelSelector over namespace labels, rewritten for Cilium's namespace-label identities. */}}
{{- define "tenant.ciliumNamespaceSelector" -}}
{{- $out := dict }}
{{- with .matchLabels }}
{{- $labels := dict }}
{{- range $k, $v := . }}
{{- $_ := set $labels (printf "io.cilium.k8s.namespace.labels.%s" $k) $v }}
{{- end }}
{{- $_ := set $out "matchLabels" $labels }}
{{- end }}
{{- with .matchExpressions }}
{{- $exprs := list }}
{{- range . }}
{{- $exprs = append $exprs (merge (dict "key" (printf "io.cilium.k8s.namespace.labels.%s" .key)) (omit . "key")) }}
{{- end }}
{{- $_ := set $out "matchExpressions" $exprs }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* kube-apiserver CIDRs for egress: only those configured (never looked up: a lookup freezes
the addresses of the day of install, and renders differently under `helm template`). */}}
{{- define "tenant.apiServerCidrs" -}}
{{- toJson .Values.networkPolicy.apiServerCidrs }}
{{- end }}

{{/* Extra ServiceAccount metadata and pod labels of one component: (dict "ctx" $ "key" "operator"). */}}
{{- define "tenant.podLabels" -}}
{{- with index .ctx.Values.podLabels .key }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress rules to the kube-apiserver and DNS: (dict "np" .Values.networkPolicy "cidrs" list). */}}
{{- define "tenant.np.apiServerAndDns" -}}
# The kube-apiserver{{ if not .cidrs }} (any address on its ports: set networkPolicy.apiServerCidrs to narrow){{ end }}.
- ports:
    {{- range .np.apiServerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
# Cluster DNS.
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .np.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .np.dns.podLabels | nindent 10 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/* Cilium: the pods of one component of this release, and the API server and DNS egress rules. */}}
{{- define "tenant.cilium.endpoint" -}}
matchLabels:
  io.kubernetes.pod.namespace: {{ .ctx.Release.Namespace }}
  {{- include "tenant.selectorLabels" . | nindent 2 }}
{{- end }}
{{- define "tenant.cilium.apiServerAndDns" -}}
- toEntities: [kube-apiserver]
- toEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: {{ .dns.namespace }}
        {{- toYaml .dns.podLabels | nindent 8 }}
  toPorts:
    - ports:
        - port: "53"
          protocol: ANY
{{- end }}

{{- /* A Go duration ("1m30s", "500ms") in milliseconds, as a float; "" when empty. */}}
{{- define "tenant.durationMs" -}}
{{- $units := dict "ns" 0.000001 "us" 0.001 "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0 }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h)" . -1 }}
{{- $unit := regexFind "(ns|us|ms|s|m|h)$" . }}
{{- $total = addf $total (mulf (float64 (trimSuffix $unit .)) (get $units $unit)) }}
{{- end }}
{{- if . }}{{ $total }}{{ end }}
{{- end }}

{{- /* ---- Per-component knobs (placement, probes, volumes): one definition per kind, so every
component renders them alike. `key`: the component's values block (operator, metricsServer,
webhooks, reloader); `component`: its app.kubernetes.io/component label. */}}

{{- /* nodeSelector, affinity, tolerations and topologySpreadConstraints of one pod: the
chart-wide nodeSelector/tolerations/affinity with the component's own merged over them (its
nodeSelector keys win, its tolerations are added, its affinity replaces the chart-wide one). A
spread constraint without a labelSelector gets the component's own pods. */}}
{{- define "tenant.placement" -}}
{{- $v := .ctx.Values -}}
{{- $c := index $v .key -}}
{{- $nodeSelector := merge (dict) ($c.nodeSelector | default dict) ($v.nodeSelector | default dict) (dict "kubernetes.io/os" "linux") -}}
nodeSelector:
  {{- toYaml $nodeSelector | nindent 2 }}
{{- with ($c.affinity | default $v.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with concat ($v.tolerations | default list) ($c.tolerations | default list) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $spread := list }}
{{- range (index $v.topologySpreadConstraints .key | default list) }}
{{- $selector := dict "matchLabels" (include "tenant.selectorLabels" (dict "ctx" $.ctx "component" $.component) | fromYaml) }}
{{- $spread = append $spread (merge (dict) . (dict "labelSelector" $selector)) }}
{{- end }}
{{- with $spread }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- /* A probe: the fixed endpoint (`probe`: an httpGet map) with the component's timing
(`timing`: initialDelaySeconds, periodSeconds, timeoutSeconds, failureThreshold,
successThreshold). */}}
{{- define "tenant.probe" -}}
{{- toYaml (merge (dict "httpGet" .probe) .timing) }}
{{- end }}

{{- /* The component's extra volumes and mounts (custom CA bundles for scalers, ...), as list
items indented by `indent`, each on a new line; nothing when there are none. */}}
{{- define "tenant.extraVolumeMounts" -}}
{{- with (index .ctx.Values.volumes .key).extraVolumeMounts }}
{{- toYaml . | nindent $.indent }}
{{- end }}
{{- end }}

{{- define "tenant.extraVolumes" -}}
{{- with (index .ctx.Values.volumes .key).extraVolumes }}
{{- toYaml . | nindent $.indent }}
{{- end }}
{{- end }}

{{- /* The wrapper (reloader, keda-tenancy-supervise) asks KEDA's own probes, at the address of
KEDA's --health-probe-bind-address (read from KEDA's own arguments, never given twice). */}}
{{- define "tenant.operatorHealthArgs" -}}
{{- with .Values.operator.healthCheck -}}
- --check-operator-health={{ .enabled }}
- --operator-start-grace={{ .startGrace }}
- --operator-probe-timeout={{ .timeout }}
{{- end }}
{{- end }}

{{- /* ---- Operator egress by destination: each rule names what it lets out. ---- */}}

{{- /* The identity endpoint of the cloud whose identity the operator's scalers use
(networkPolicy.cloudIdentity; deploy/examples/identity-*.yaml set it). */}}
{{- define "tenant.np.cloudIdentity" -}}
{{- if eq .cloudIdentity "gke" }}
# GKE Workload Identity: the GKE metadata server (169.254.169.254:80; on Dataplane V2 it
# answers on 169.254.169.252:988).
- to:
    - ipBlock:
        cidr: 169.254.169.254/32
  ports:
    - port: 80
      protocol: TCP
- to:
    - ipBlock:
        cidr: 169.254.169.252/32
  ports:
    - port: 988
      protocol: TCP
{{- else if eq .cloudIdentity "eks" }}
# EKS Pod Identity: its agent on the node (169.254.170.23:80, fd00:ec2::23:80), and the
# instance metadata service (IMDS, 169.254.169.254:80). IRSA instead calls STS on 443 (below).
- to:
    - ipBlock:
        cidr: 169.254.170.23/32
    - ipBlock:
        cidr: fd00:ec2::23/128
    - ipBlock:
        cidr: 169.254.169.254/32
  ports:
    - port: 80
      protocol: TCP
{{- end }}
{{- if has .cloudIdentity (list "gke" "eks" "aks") }}
{{- $what := dict "gke" "Google APIs and STS (*.googleapis.com)" "eks" "AWS STS (IRSA's sts.<region>.amazonaws.com) and AWS APIs" "aks" "Microsoft Entra ID (login.microsoftonline.com) and Azure APIs" }}
# {{ index $what .cloudIdentity }} on 443. NetworkPolicy cannot name a host: any public
# address on 443 (Cilium's toFQDNs can name it).
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 169.254.0.0/16]
  ports:
    - port: 443
      protocol: TCP
{{- end }}
{{- end }}

{{- /* networkPolicy.scalerEgress: one rule per scaler destination, named. */}}
{{- define "tenant.np.scalerEgress" -}}
{{- range .scalerEgress }}
# Scaler destination: {{ .name }}.
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end }}

{{/* NetworkPolicy peers allowed to scrape the metrics ports: networkPolicy.metricsFrom and, when
networkPolicy.monitoring.namespace is set, Prometheus' pods there (a JSON list; empty: none). */}}
{{- define "tenant.metricsFrom" -}}
{{- $peers := .Values.networkPolicy.metricsFrom | default list }}
{{- with .Values.networkPolicy.monitoring }}
{{- if .namespace }}
{{- $peer := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .namespace)) }}
{{- with .podLabels }}
{{- $_ := set $peer "podSelector" (dict "matchLabels" .) }}
{{- end }}
{{- $peers = append $peers $peer }}
{{- end }}
{{- end }}
{{- toJson $peers }}
{{- end }}

{{/* A PrometheusRule's runbook link: (dict "ctx" $ "anchor" "kedatenancymetricsserverdown"). */}}
{{- define "tenant.runbook" -}}
{{- printf "%s#%s" .ctx.Values.prometheusRule.runbookBaseUrl .anchor }}
{{- end }}

{{- /* ---- The platform layout (platformController.enabled; deploy/README.md, "The platform
layout"): the router release's keda-tenancy-controller keeps this tenant's bindings, namespace set,
deployment-mode patch and Lease releases; this release keeps only KEDA's pods. ---- */}}

{{- /* "true" when the platform controller serves this tenant, else "". */}}
{{- define "tenant.platform" -}}
{{- if .Values.platformController.enabled }}true{{ end }}
{{- end }}

{{- /* The namespace set the platform controller publishes (read by the operator pod). */}}
{{- define "tenant.namespacesConfigMap" -}}
keda-operator-namespaces
{{- end }}

{{- /* The in-pod process's flags shared by both modes (YAML list items). */}}
{{- define "tenant.operatorPodArgs" -}}
- --health-port={{ .Values.reloader.healthPort }}
- --grace-period={{ .Values.reloader.gracePeriod }}
- --log-level={{ .Values.reloader.logLevel }}
{{- include "tenant.operatorHealthArgs" . | nindent 0 }}
{{- range .Values.platformController.operatorPodExtraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
