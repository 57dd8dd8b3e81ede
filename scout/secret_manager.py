"""Scout's settings read from Secret Manager when it starts (SCOUT_SECRETS=secretmanager).

Each secret is named as the variable it fills (SECRET_KEY, TWILIO_AUTH_TOKEN, ...), so `.env`
stays as it is for local use and nothing secret is written into app.yaml or uploaded with the
source. A variable already set in the environment wins over its secret (explicit settings win).
A secret that does not exist is skipped: scout.config then names any required setting still
missing. A secret that cannot be read (no permission, Secret Manager unreachable) stops the
start with one line saying what to do.

The client speaks REST (plain HTTPS, no gRPC channel to survive a fork) and is used once, in
the process that starts first; the values are handed to the processes it starts through the
environment.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Every variable that may hold a secret or a deployment-specific setting.
SECRET_NAMES: tuple[str, ...] = (
    "SECRET_KEY", "SITE_URL", "GOOGLE_CLIENT_ID", "SCOUT_TELEPHONY", "SCOUT_DEFAULT_REGION",
    "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_NUMBER", "TWILIO_WHATSAPP_NUMBER",
    "NEXMO_API_KEY", "NEXMO_API_SECRET", "NEXMO_APPLICATION_ID", "NEXMO_PRIVATE_KEY", "NEXMO_NUMBER",
    "NEXMO_WHATSAPP_NUMBER", "NEXMO_SIGNATURE_SECRET", "WAIT_AFTER_CALL", "NIGHTSCOUT_FAILED_PING_SMS",
)
# Without these Scout cannot start in production; scripts/deploy.sh checks they exist.
REQUIRED_SECRETS: tuple[str, ...] = ("SECRET_KEY", "SITE_URL", "GOOGLE_CLIENT_ID")
SOURCE_VARIABLE = "SCOUT_SECRETS"
READ_MARKER = "SCOUT_SECRETS_READ"  # set once read, so the processes Scout starts do not read again
REQUEST_TIMEOUT = 10.0  # seconds for each secret, retries included
ACCESSOR_ROLE = "roles/secretmanager.secretAccessor"


class SecretsError(Exception):
    """Secret Manager could not be read; the message says what to do."""


def wanted(env: Mapping[str, str]) -> bool:
    source = env.get(SOURCE_VARIABLE, "").strip().lower()
    if source not in ("", "env", "secretmanager"):
        raise SecretsError(f"{SOURCE_VARIABLE} must be 'secretmanager' or 'env' (the default), got {source!r}.")
    return source == "secretmanager" and not env.get(READ_MARKER)


def _client(endpoint: str) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.cloud import secretmanager

    credentials = None
    if endpoint.startswith("http://"):
        # a plain-http endpoint is a local double (tests, drills): no Google credentials go to it
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    options = ClientOptions(api_endpoint=endpoint) if endpoint else None
    return secretmanager.SecretManagerServiceClient(credentials=credentials, transport="rest", client_options=options)


def _checked(name: str, payload: Any) -> str:
    import google_crc32c

    data: bytes = payload.data
    if payload.data_crc32c and google_crc32c.value(data) != payload.data_crc32c:
        raise SecretsError(f"the secret {name} arrived damaged (its checksum does not match): start again.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretsError(f"the secret {name} is not UTF-8 text: store the setting's text in it.") from None


def read_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The secrets named as Scout's variables that the environment does not already set."""
    from google.api_core import exceptions as google_errors
    from google.api_core.retry import Retry
    from google.auth import exceptions as google_auth_errors

    project = (env.get("SCOUT_SECRETS_PROJECT", "") or env.get("GOOGLE_CLOUD_PROJECT", "")).strip()
    if not project:
        raise SecretsError(f"{SOURCE_VARIABLE}=secretmanager but neither SCOUT_SECRETS_PROJECT nor "
                           "GOOGLE_CLOUD_PROJECT names the project that holds the secrets.")
    client = _client(env.get("SCOUT_SECRET_MANAGER_ENDPOINT", "").strip())
    retry = Retry(predicate=lambda exc: isinstance(exc, (google_errors.ServiceUnavailable,
                                                         google_errors.TooManyRequests)),
                  initial=0.2, maximum=2.0, timeout=REQUEST_TIMEOUT)
    found: dict[str, str] = {}
    try:
        for name in SECRET_NAMES:
            if env.get(name, "").strip():
                continue  # set explicitly: it wins
            path = f"projects/{project}/secrets/{name}/versions/latest"
            try:
                answer = client.access_secret_version(name=path, retry=retry, timeout=REQUEST_TIMEOUT)
            except google_errors.NotFound:
                continue  # not stored: the setting is optional, or scout.config names it
            except (google_errors.Forbidden, google_errors.PermissionDenied, google_errors.Unauthorized,
                    google_errors.Unauthenticated) as exc:
                raise SecretsError(
                    f"Secret Manager refused to give the secret {name} in project {project} ({exc.message}): grant "
                    f"this service account {ACCESSOR_ROLE} (docs/deploy.md, step 4).") from None
            except google_auth_errors.GoogleAuthError as exc:
                raise SecretsError(f"no Google credentials to read the secret {name} with ({exc}): on App Engine "
                                   "the app's service account is used; elsewhere set "
                                   "GOOGLE_APPLICATION_CREDENTIALS.") from None
            except (google_errors.GoogleAPIError, OSError) as exc:
                raise SecretsError(f"Secret Manager could not be read for {name} in project {project}: {exc}. "
                                   "Check this server's network and Secret Manager's status.") from None
            found[name] = _checked(name, answer.payload)
    finally:
        client.transport.close()
    return found


def main() -> None:
    """`python -m scout.secret_manager`: print the secrets found as one JSON object, or the
    reason on stderr and exit 2. scout.config runs it in a process of its own, so the Google
    client libraries (and gRPC, which they import) never load in gunicorn's master before it forks."""
    import json
    import os
    import sys

    try:
        found = read_secrets(os.environ)
    except SecretsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    json.dump(found, sys.stdout)


if __name__ == "__main__":
    main()
