"""Google Cloud Storage credentials, and blob URLs signed with them.

A signed URL lets a client fetch a blob from the bucket itself for a few
minutes.  Credentials sign with a service-account key held here, or, on
Google's machines (Compute Engine, GKE, Cloud Run), through IAM signBlob as
the instance's own service account.  Other credentials authenticate
requests but cannot sign: the registry then streams blobs itself.
"""
from __future__ import annotations

import datetime
import json
import logging
import threading

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
from cachetools import TTLCache

from .errors import StorageUnavailable
from .gcs_retry import detail

logger = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]


def can_sign(creds) -> bool:
    """Whether `creds` can sign URLs (see the module)."""
    if creds is None:
        return False
    if isinstance(creds, google.auth.credentials.Signing):
        return True
    # Compute Engine style credentials: IAM signBlob with the account's token.
    return bool(getattr(creds, "service_account_email", None))


def load_key_file(path):
    """Credentials from the operator's own key file (GOOGLE_APPLICATION_CREDENTIALS)."""
    from google.oauth2 import service_account
    try:
        with open(path) as f:
            info = json.load(f)
        if info.get("type") == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        # other kinds (user, workload identity federation) authenticate
        # requests but cannot sign URLs
        creds, _ = google.auth.load_credentials_from_dict(info, scopes=SCOPES)
        return creds
    except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as e:
        raise StorageUnavailable(f"cannot use GOOGLE_APPLICATION_CREDENTIALS {path}: "
                                 f"{detail(e)}") from e


def default_credentials():
    """Application Default Credentials, or StorageUnavailable saying what to set."""
    try:
        creds, _ = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.GoogleAuthError as e:
        raise StorageUnavailable(
            "Google Cloud Storage needs credentials: set GOOGLE_APPLICATION_CREDENTIALS to a "
            f"service-account key, or run with an attached service account ({detail(e)})") from e
    return creds


class Signer:
    """Signs GET URLs of blobs, valid for `seconds`, pointing at `endpoint`
    (Google's, or an emulator's)."""

    def __init__(self, creds, *, seconds: int, endpoint: str):
        self.creds = creds
        self.seconds = seconds
        self.endpoint = endpoint
        self._creds_lock = threading.Lock()
        self._failed = False
        # A URL is handed out for at most half its life, so a client always
        # has minutes to use it.
        self._urls = TTLCache(maxsize=4096, ttl=max(1, seconds // 2))
        self._urls_lock = threading.Lock()

    def url(self, blob) -> str | None:
        """A signed URL of `blob`, or None when signing fails (logged)."""
        with self._urls_lock:
            url = self._urls.get(blob.name)
        if url is not None:
            return url
        try:
            url = self._sign(blob)
        except Exception as e:  # a URL is an optimisation: stream instead of failing the pull
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            logger.log(level, "cannot sign a URL for %s, streaming it instead: %s", blob.name,
                       detail(e))
            return None
        with self._urls_lock:
            self._urls[blob.name] = url
        return url

    def _sign(self, blob) -> str:
        expiration = datetime.timedelta(seconds=self.seconds)
        if isinstance(self.creds, google.auth.credentials.Signing):
            return blob.generate_signed_url(
                version="v4", method="GET", expiration=expiration,
                credentials=self.creds, api_access_endpoint=self.endpoint)
        # No private key here (Compute Engine, GKE, Cloud Run): IAM signBlob
        # signs as the instance's service account, with its access token.
        with self._creds_lock:
            if not self.creds.valid:
                self.creds.refresh(google.auth.transport.requests.Request())
            email, token = self.creds.service_account_email, self.creds.token
        return blob.generate_signed_url(
            version="v4", method="GET", expiration=expiration,
            service_account_email=email, access_token=token,
            api_access_endpoint=self.endpoint)
