{{/* Names, labels and the chart-generated certificates, computed once per render. */}}

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

{{/* Secret names. The CA secret holds the CA's key: the tenant chart signs tenants' metrics-server
certificates with it when cert-manager is off. */}}
{{- define "router.caSecretName" -}}{{ include "router.fullname" . }}-ca{{- end }}
{{- define "router.servingSecretName" -}}{{ include "router.fullname" . }}-serving-tls{{- end }}
{{- define "router.clientSecretName" -}}{{ include "router.fullname" . }}-upstream-client-tls{{- end }}
{{- define "router.servingCertificateName" -}}{{ include "router.fullname" . }}-serving{{- end }}

{{/* The cert-manager issuer of the router's certificates, as an issuerRef mapping. */}}
{{- define "router.issuerRef" -}}
{{- if .Values.certificates.certManager.issuerRef }}
{{- toYaml .Values.certificates.certManager.issuerRef }}
{{- else }}
group: cert-manager.io
kind: ClusterIssuer
name: {{ include "router.fullname" . }}-ca
{{- end }}
{{- end }}

{{- define "router.serviceDnsNames" -}}
{{- $svc := include "router.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- concat $names .Values.certificates.serving.extraDnsNames | toJson }}
{{- end }}

{{/*
The chart-generated CA and certificates (cert-manager off), as JSON {ca, caKey, servingCert,
servingKey, clientCert, clientKey}, all PEM. Existing Secrets are reused (lookup), so upgrades
keep the CA that tenants and the APIService trust; new ones are generated only on first install
(or after the Secrets are deleted). Memoized on .Values so every template sees the same material.
*/}}
{{- define "router.generatedTLS" -}}
{{- if not (hasKey .Values "__generatedTLS") }}
{{- $ns := .Release.Namespace }}
{{- $out := dict }}
{{- $caSecret := lookup "v1" "Secret" $ns (include "router.caSecretName" .) }}
{{- $ca := dict }}
{{- if and $caSecret $caSecret.data (index $caSecret.data "tls.crt") (index $caSecret.data "tls.key") }}
{{- $ca = buildCustomCert (index $caSecret.data "tls.crt") (index $caSecret.data "tls.key") }}
{{- else }}
{{- $ca = genCA .Values.certificates.ca.commonName (int .Values.certificates.ca.validityDays) }}
{{- end }}
{{- $_ := set $out "ca" $ca.Cert }}
{{- $_ := set $out "caKey" $ca.Key }}
{{- $serving := lookup "v1" "Secret" $ns (include "router.servingSecretName" .) }}
{{- if and $caSecret $serving $serving.data (index $serving.data "tls.crt") }}
{{- $_ := set $out "servingCert" (index $serving.data "tls.crt" | b64dec) }}
{{- $_ := set $out "servingKey" (index $serving.data "tls.key" | b64dec) }}
{{- else }}
{{- $dns := include "router.serviceDnsNames" . | fromJsonArray }}
{{- $cert := genSignedCert (include "router.fullname" .) nil $dns (int .Values.certificates.serving.validityDays) $ca }}
{{- $_ := set $out "servingCert" $cert.Cert }}
{{- $_ := set $out "servingKey" $cert.Key }}
{{- end }}
{{- $client := lookup "v1" "Secret" $ns (include "router.clientSecretName" .) }}
{{- if and $caSecret $client $client.data (index $client.data "tls.crt") }}
{{- $_ := set $out "clientCert" (index $client.data "tls.crt" | b64dec) }}
{{- $_ := set $out "clientKey" (index $client.data "tls.key" | b64dec) }}
{{- else }}
{{- $cert := genSignedCert .Values.certificates.upstreamClient.commonName nil nil (int .Values.certificates.upstreamClient.validityDays) $ca }}
{{- $_ := set $out "clientCert" $cert.Cert }}
{{- $_ := set $out "clientKey" $cert.Key }}
{{- end }}
{{- $_ := set .Values "__generatedTLS" $out }}
{{- end }}
{{- toJson (get .Values "__generatedTLS") }}
{{- end }}

{{/* The tenancy rule as command-line flags (one per line, YAML list items). */}}
{{- define "router.tenancyArgs" -}}
{{- range .Values.tenancy.labelKeys }}
- --tenant-label-key={{ . }}
{{- end }}
{{- with .Values.tenancy.hnc.roots }}
- --hnc-roots={{ join "," . }}
{{- end }}
{{- with .Values.tenancy.hnc.rootLabel }}
- --hnc-root-label={{ . }}
{{- end }}
{{- with .Values.tenancy.namespaceNamePattern }}
- --namespace-name-pattern={{ . }}
{{- end }}
{{- if .Values.tenancy.tenants }}
- --tenancy-file=/etc/keda-tenancy/tenancy/tenancy.yaml
{{- end }}
{{- end }}
