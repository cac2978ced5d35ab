{{/* Names and labels shared by every template. */}}

{{- define "mio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mio.fullname" -}}
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

{{- define "mio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mio.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: matrix-invite-operator
{{- end }}

{{- define "mio.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mio.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mio.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces of namespaced mode: watchNamespaces, or the release namespace. */}}
{{- define "mio.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- join "," .Values.watchNamespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
The operator's rights, the same in a Role and a ClusterRole. Each rule is used by the code:
- invitations list/watch: Kopf's watch (one per namespace, or cluster-wide).
- invitations get: the sync pass reads an Invitation afresh before repairing drift
  (reconcile.py repair_drift), so a stale watch cache never undoes an edit.
- invitations patch: Kopf's finalizer and its progress annotations (matrix-invite.dev/...).
- invitations/status patch: every status write (kube.py patch_invitation_status).
- invitations/finalizers update: the token Secret's ownerReference sets blockOwnerDeletion,
  which clusters running the OwnerReferencesPermissionEnforcement admission plugin allow only to
  whoever may update the owner's finalizers.
- secrets get/create/patch: the token Secret (read it back, create it, replace its token).
- events create: Events on Invitations, posted by Kopf and by the operator (kube.py KubeEvents).
Nothing else: no namespaces or CRDs are listed (Kopf's scanning is off) and no Secret is ever
listed, watched or deleted (garbage collection deletes them with their Invitation).
*/}}
{{- define "mio.rules" -}}
- apiGroups: ["matrix-invite.dev"]
  resources: ["invitations"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["matrix-invite.dev"]
  resources: ["invitations/status"]
  verbs: ["patch"]
- apiGroups: ["matrix-invite.dev"]
  resources: ["invitations/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The invite page's Pods: a name of their own, so no selector of the operator's matches them. */}}
{{- define "mio.invitePageSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mio.name" . }}-invite-page
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: invite-page
{{- end }}
