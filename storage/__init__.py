"""Blob and manifest storage: one interface, a driver per backend."""
from __future__ import annotations

from . import keys
from .base import Storage
from .errors import (CorruptObject, IntegrityError, ObjectNotFound, StorageError,
                     StorageUnavailable)
from .filesystem import FilesystemStorage


def _gcs(config):
    from .gcs import GCSStorage  # imported only when used: it pulls in google-cloud
    return GCSStorage(config.bucket, credentials_file=config.google_credentials,
                      endpoint=config.gcs_endpoint, retry_seconds=config.gcs_retry_seconds)


def _s3(config):
    from .s3 import S3Storage  # imported only when used: it pulls in boto3
    return S3Storage(config.bucket)


DRIVERS = {
    "filesystem": lambda config: FilesystemStorage(config.storage_path,
                                                   group=config.storage_gid),
    "gcs": _gcs,
    "s3": _s3,
}


def from_config(config) -> Storage:
    return DRIVERS[config.storage_backend](config)


__all__ = ["Storage", "FilesystemStorage", "DRIVERS", "from_config", "keys",
           "StorageError", "StorageUnavailable", "ObjectNotFound", "CorruptObject", "IntegrityError"]
