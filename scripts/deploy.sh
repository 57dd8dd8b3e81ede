#!/usr/bin/env bash
# Deploys Scout to App Engine. Secrets stay in Secret Manager: Scout reads them when it starts
# (SCOUT_SECRETS=secretmanager in app.yaml), so nothing secret is written into app.yaml or
# uploaded. This script checks first that every secret Scout needs exists, showing gcloud's
# own error, and stops on the first one missing: a deploy that cannot start is never made.
#   usage: scripts/deploy.sh PROJECT_ID [extra gcloud app deploy flags]
set -euo pipefail
cd "$(dirname "$0")/.."
project="${1:?usage: scripts/deploy.sh PROJECT_ID [extra gcloud app deploy flags]}"
shift

command -v gcloud >/dev/null || { echo "deploy: gcloud is not installed (https://cloud.google.com/sdk/docs/install)" >&2; exit 1; }

# The names come from Scout itself, so this list and the app never disagree.
required_names="$(python3 -c 'from scout.secret_manager import REQUIRED_SECRETS as r; print(*r)')"
read -r -a required <<<"$required_names"

# "gcloud ..." with its errors shown; stops the deploy when it fails.
run() {
  local output
  if ! output="$("$@" 2>&1)"; then
    printf '%s\n' "$output" >&2
    return 1
  fi
  printf '%s' "$output"
}

check_secret() {
  local name="$1" state
  if ! state="$(run gcloud secrets versions describe latest --secret="$name" --project="$project" \
                  --format='value(state)')"; then
    echo "deploy: stopped: the secret $name cannot be read in project $project (gcloud's error above)." >&2
    echo "        Create it:  printf %s VALUE | gcloud secrets create $name --data-file=- --project=$project" >&2
    exit 1
  fi
  if [ "${state,,}" != "enabled" ]; then
    echo "deploy: stopped: the latest version of the secret $name is ${state:-in no known state}, not enabled." >&2
    echo "        Add one:  printf %s VALUE | gcloud secrets versions add $name --data-file=- --project=$project" >&2
    exit 1
  fi
  echo "secret $name: present"
}

for name in "${required[@]}" SCOUT_TELEPHONY; do
  check_secret "$name"
done
telephony="$(run gcloud secrets versions access latest --secret=SCOUT_TELEPHONY --project="$project")" || {
  echo "deploy: stopped: SCOUT_TELEPHONY cannot be read (gcloud's error above)." >&2; exit 1; }
if ! provider_secrets="$(python3 -c 'import sys
from scout.config import TELEPHONY_VARIABLES as t
names = t.get(sys.argv[1].strip().lower())
print(*names) if names else sys.exit(1)' "$telephony")"; then
  echo "deploy: stopped: the secret SCOUT_TELEPHONY says '$telephony'; it must be twilio or vonage." >&2
  exit 1
fi
for name in $provider_secrets; do
  check_secret "$name"
done

echo "every required secret is present; deploying"
gcloud app deploy app.yaml --project="$project" --quiet "$@"
