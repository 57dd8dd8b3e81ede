#!/usr/bin/env bash
# Deploys Scout to App Engine with its secrets taken from Secret Manager at deploy time.
# The secrets never enter the repository: they are written to a temporary copy of app.yaml
# (deleted on exit) that gcloud uploads as the version's environment.
#   usage: scripts/deploy.sh PROJECT_ID [extra gcloud app deploy flags]
set -euo pipefail
cd "$(dirname "$0")/.."
project="${1:?usage: scripts/deploy.sh PROJECT_ID}"
shift

# Every secret whose name is a Scout variable is passed on; missing optional ones are skipped.
names=(SECRET_KEY SITE_URL GOOGLE_CLIENT_ID SCOUT_TELEPHONY SCOUT_DEFAULT_REGION
       TWILIO_ACCOUNT_SID TWILIO_AUTH_TOKEN TWILIO_NUMBER TWILIO_WHATSAPP_NUMBER
       NEXMO_API_KEY NEXMO_API_SECRET NEXMO_APPLICATION_ID NEXMO_PRIVATE_KEY NEXMO_NUMBER
       NEXMO_WHATSAPP_NUMBER NEXMO_SIGNATURE_SECRET WAIT_AFTER_CALL NIGHTSCOUT_FAILED_PING_SMS)

deploy_yaml="$(mktemp --suffix=.yaml -p . .app.deploy.XXXXXX)"
trap 'rm -f "$deploy_yaml"' EXIT
cp app.yaml "$deploy_yaml"
for name in "${names[@]}"; do
  if value="$(gcloud secrets versions access latest --secret="$name" --project="$project" 2>/dev/null)"; then
    # a JSON string is a valid YAML double-quoted scalar, multi-line keys included
    printf '  %s: %s\n' "$name" "$(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()[:-1]))' <<<"$value")" \
      >>"$deploy_yaml"
    echo "secret $name: set"
  fi
done
gcloud app deploy "$deploy_yaml" --project="$project" --quiet "$@"
