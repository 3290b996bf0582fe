"""Storage failures, mapped to registry errors in app/errors.py."""


class StorageError(Exception):
    """Base of storage failures."""


class ObjectNotFound(StorageError):
    """No object under the key."""


class CorruptObject(ObjectNotFound):
    """The stored bytes no longer match their digest; the object was set aside."""


class IntegrityError(StorageError):
    """Data did not match the digest or MD5 it was stored under; nothing was written."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached or refused the operation."""
