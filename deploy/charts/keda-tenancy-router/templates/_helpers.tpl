{{/* Names, labels, certificate names and issuers. */}}

{{- define "router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "router.fullname" -}}
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

{{- define "router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end }}

{{- define "router.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "router.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keda-tenancy
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "router.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "router.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Secret names. Each CA Secret holds its CA's key and stays in this namespace (the
tenantServing CA's, with cert-manager, in its cluster resource namespace). */}}
{{- define "router.apiServiceCASecretName" -}}{{ include "router.fullname" . }}-apiservice-ca{{- end }}
{{- define "router.upstreamClientCASecretName" -}}{{ include "router.fullname" . }}-upstream-client-ca{{- end }}
{{- define "router.tenantServingCASecretName" -}}{{ include "router.fullname" . }}-tenant-serving-ca{{- end }}
{{- define "router.servingSecretName" -}}{{ include "router.fullname" . }}-serving-tls{{- end }}
{{- define "router.clientSecretName" -}}{{ include "router.fullname" . }}-upstream-client-tls{{- end }}
{{- define "router.servingCertificateName" -}}{{ include "router.fullname" . }}-serving{{- end }}
{{/* Public CA certificates keda-tenancy-certs publishes (no keys). */}}
{{- define "router.trustConfigMapName" -}}{{ include "router.fullname" . }}-trust{{- end }}
{{/* cert-manager: a Secret whose ca.crt is the tenantServing CA, for the router to verify tenants. */}}
{{- define "router.tenantServingTrustSecretName" -}}{{ include "router.fullname" . }}-tenant-serving-trust{{- end }}
{{- define "router.certsName" -}}{{ include "router.fullname" . }}-certs{{- end }}

{{/* cert-manager issuerRefs per trust, as mappings: the given one or the chart's own CA. */}}
{{- define "router.apiServiceIssuerRef" -}}
{{- with .Values.certificates.certManager.apiServiceIssuerRef }}
{{- toYaml . }}
{{- else }}
group: cert-manager.io
kind: Issuer
name: {{ include "router.fullname" . }}-apiservice-ca
{{- end }}
{{- end }}
{{- define "router.upstreamClientIssuerRef" -}}
{{- with .Values.certificates.certManager.upstreamClientIssuerRef }}
{{- if ne (default "Issuer" .kind) "Issuer" }}
{{- fail "certificates.certManager.upstreamClientIssuerRef must be a namespaced Issuer: with a ClusterIssuer any namespace allowed to create Certificates could obtain the router's identity" }}
{{- end }}
{{- toYaml . }}
{{- else }}
group: cert-manager.io
kind: Issuer
name: {{ include "router.fullname" . }}-upstream-client-ca
{{- end }}
{{- end }}
{{- define "router.tenantServingIssuerRef" -}}
{{- with .Values.certificates.certManager.tenantServingIssuerRef }}
{{- toYaml . }}
{{- else }}
group: cert-manager.io
kind: ClusterIssuer
name: {{ include "router.fullname" . }}-tenant-serving
{{- end }}
{{- end }}

{{- define "router.serviceDnsNames" -}}
{{- $svc := include "router.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- concat $names .Values.certificates.serving.extraDnsNames | toJson }}
{{- end }}

{{/*
Egress peers for upstream URLs (router.defaultUpstream, per-tenant overrides): a Service name
<svc>.<ns>.svc[.<domain>] becomes its namespace (any port: the Service's targetPort is not in
the URL); an IP becomes that address on the URL's port; any other host can only be the URL's
port to any address (NetworkPolicy has no host names). JSON list of NetworkPolicy egress rules.
*/}}
{{- define "router.upstreamEgress" -}}
{{- $urls := list }}
{{- with .Values.router.defaultUpstream }}{{ $urls = append $urls . }}{{ end }}
{{- range $name, $spec := .Values.tenancy.tenants }}
{{- if and $spec $spec.upstream }}{{ $urls = append $urls $spec.upstream }}{{ end }}
{{- end }}
{{- range $name, $u := .Values.routing.upstreams }}{{ $urls = append $urls $u.url }}{{ end }}
{{- $rules := list }}
{{- $namespaces := list }}
{{- range $urls | uniq }}
{{- $u := urlParse . }}
{{- $host := $u.hostname }}
{{- $port := 443 }}
{{- if ne $u.host $u.hostname }}{{ $port = (last (splitList ":" $u.host)) | int }}{{ end }}
{{- $parts := splitList "." $host }}
{{- if and (ge (len $parts) 3) (eq (index $parts 2) "svc") }}
{{- $namespaces = append $namespaces (index $parts 1) }}
{{- else if regexMatch "^[0-9.]+$" $host }}
{{- $rules = append $rules (dict "to" (list (dict "ipBlock" (dict "cidr" (printf "%s/32" $host)))) "ports" (list (dict "port" $port "protocol" "TCP"))) }}
{{- else if contains ":" $host }}
{{- $rules = append $rules (dict "to" (list (dict "ipBlock" (dict "cidr" (printf "%s/128" $host)))) "ports" (list (dict "port" $port "protocol" "TCP"))) }}
{{- else }}
{{- $rules = append $rules (dict "ports" (list (dict "port" $port "protocol" "TCP"))) }}
{{- end }}
{{- end }}
{{- range $namespaces | uniq }}
{{- $rules = append $rules (dict "to" (list (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .))))) }}
{{- end }}
{{- toJson $rules }}
{{- end }}

{{/* The published tenancy rule's ConfigMap; its reader Role is this name with "-reader". */}}
{{- define "router.tenancyRuleName" -}}
{{ include "router.fullname" . }}-tenancy-rule
{{- end }}

{{/* The rule document (tenancy_common/tenancy_config.py parse_rule_document): the `tenancy`
values, with only the namespace lists of `tenants`. */}}
{{- define "router.tenancyRule" -}}
{{- $t := .Values.tenancy }}
{{- $tenants := dict }}
{{- range $name, $spec := $t.tenants }}
{{- if and $spec $spec.namespaces }}{{ $_ := set $tenants $name (dict "namespaces" $spec.namespaces) }}{{ end }}
{{- end }}
{{- dict "labelKeys" ($t.labelKeys | default list) "hnc" (dict "roots" ($t.hnc.roots | default list) "rootLabel" ($t.hnc.rootLabel | default "")) "namespaceNamePattern" ($t.namespaceNamePattern | default "") "tenants" $tenants | toYaml }}
{{- end }}

{{/* The tenancy file of upstream overrides: `tenants` without their namespace lists. */}}
{{- define "router.tenancyOverrides" -}}
{{- $tenants := dict }}
{{- range $name, $spec := .Values.tenancy.tenants }}
{{- $_ := set $tenants $name (omit ($spec | default dict) "namespaces") }}
{{- end }}
{{- dict "tenants" $tenants | toYaml }}
{{- end }}

{{/* The tenancy rule as command-line flags (one per line, YAML list items): the published rule. */}}
{{- define "router.tenancyArgs" -}}
- --tenancy-rule-file=/etc/keda-tenancy/rule/rule.yaml
{{- if .Values.tenancy.tenants }}
- --tenancy-file=/etc/keda-tenancy/tenancy/tenancy.yaml
{{- end }}
{{- end }}

{{/* The routing rules file (router.upstream_rules) from .Values.routing, with the mounted
Secrets' paths in place of their names. */}}
{{- define "router.routingRules" -}}
{{- $upstreams := dict }}
{{- range $name, $u := .Values.routing.upstreams }}
{{- $out := dict "url" $u.url }}
{{- with $u.serverName }}{{ $_ := set $out "serverName" . }}{{ end }}
{{- with $u.tenant }}{{ $_ := set $out "tenant" . }}{{ end }}
{{- if $u.caSecret }}
{{- $_ := set $out "caFile" (printf "/etc/keda-tenancy/upstreams/%s/ca/%s" $name ($u.caKey | default "ca.crt")) }}
{{- end }}
{{- if $u.clientCertSecret }}
{{- $_ := set $out "clientCertFile" (printf "/etc/keda-tenancy/upstreams/%s/client/tls.crt" $name) }}
{{- $_ := set $out "clientKeyFile" (printf "/etc/keda-tenancy/upstreams/%s/client/tls.key" $name) }}
{{- end }}
{{- $_ := set $upstreams $name $out }}
{{- end }}
{{- dict "upstreams" $upstreams "rules" .Values.routing.rules | toYaml }}
{{- end }}

{{/* Flags of the routing rules and of the default upstream's own trust. */}}
{{- define "router.routingArgs" -}}
{{- if or .Values.routing.rules .Values.routing.upstreams }}
- --routing-rules-file=/etc/keda-tenancy/routing/rules.yaml
{{- end }}
{{- with .Values.routing.registration.namespaces }}
- --registration-namespaces={{ join "," . }}
{{- end }}
{{- with .Values.routing.defaultUpstream }}
{{- if .caSecret }}
- --default-upstream-ca-file=/etc/keda-tenancy/default-upstream/ca/{{ .caKey | default "ca.crt" }}
{{- end }}
{{- with .serverName }}
- --default-upstream-server-name={{ . }}
{{- end }}
{{- if .clientCertSecret }}
- --default-upstream-client-cert-file=/etc/keda-tenancy/default-upstream/client/tls.crt
- --default-upstream-client-key-file=/etc/keda-tenancy/default-upstream/client/tls.key
{{- end }}
{{- end }}
{{- end }}

{{/* Volume mounts (mounts=true) or volumes of the routing rules and upstream Secrets. */}}
{{- define "router.routingVolumes" -}}
{{- $mounts := .mounts }}
{{- $routing := .root.Values.routing }}
{{- $fullname := include "router.fullname" .root }}
{{- if or $routing.rules $routing.upstreams }}
{{- if $mounts }}
- name: routing
  mountPath: /etc/keda-tenancy/routing
  readOnly: true
{{- else }}
- name: routing
  configMap:
    name: {{ $fullname }}-routing
{{- end }}
{{- end }}
{{- $secrets := list }}
{{- range $name, $u := $routing.upstreams }}
{{- with $u.caSecret }}{{ $secrets = append $secrets (list (printf "upstream-%s-ca" $name) (printf "/etc/keda-tenancy/upstreams/%s/ca" $name) .) }}{{ end }}
{{- with $u.clientCertSecret }}{{ $secrets = append $secrets (list (printf "upstream-%s-client" $name) (printf "/etc/keda-tenancy/upstreams/%s/client" $name) .) }}{{ end }}
{{- end }}
{{- with $routing.defaultUpstream.caSecret }}{{ $secrets = append $secrets (list "default-upstream-ca" "/etc/keda-tenancy/default-upstream/ca" .) }}{{ end }}
{{- with $routing.defaultUpstream.clientCertSecret }}{{ $secrets = append $secrets (list "default-upstream-client" "/etc/keda-tenancy/default-upstream/client" .) }}{{ end }}
{{- range $secrets }}
{{- if $mounts }}
- name: {{ index . 0 }}
  mountPath: {{ index . 1 }}
  readOnly: true
{{- else }}
- name: {{ index . 0 }}
  secret:
    secretName: {{ index . 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/* NetworkPolicy peers allowed to scrape the health ports: networkPolicy.metricsFrom and, when
networkPolicy.monitoring.namespace is set, Prometheus' pods there (a JSON list; empty: anywhere). */}}
{{- define "router.metricsFrom" -}}
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

{{/* A PrometheusRule's runbook link: (dict "ctx" $ "anchor" "kedatenancytenantfailingfast"). */}}
{{- define "router.runbook" -}}
{{- printf "%s#%s" .ctx.Values.prometheusRule.runbookBaseUrl .anchor }}
{{- end }}
