"""A real S3 endpoint on loopback for tests: moto's server (moto[server])."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

from tests.server import answers, free_port, stop_process, wait_ready

# moto takes any credentials; the region is where buckets are made
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "registry-test", "AWS_SECRET_ACCESS_KEY": "registry-test",
               "AWS_REGION": "us-east-1"}


class MotoServer:
    def __init__(self, workdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "moto.log")
        self.proc = None

    def start(self, timeout=30):
        server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
        if server is None:
            raise RuntimeError("moto_server is not installed; run the tests with `make test`")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if wait_ready(self.proc, lambda: answers(self.url + "/moto-api/", 200), timeout):
            return self
        self.stop()
        raise RuntimeError(f"moto's server did not answer within {timeout}s")

    def stop(self):
        if self.proc:
            stop_process(self.proc, 10)
            self.log.close()

    @property
    def env(self) -> dict:
        """boto3's own settings for this endpoint, as an operator sets them."""
        return {"AWS_ENDPOINT_URL_S3": self.url, **CREDENTIALS}

    def client(self):
        import boto3
        import botocore.config
        return boto3.client("s3", endpoint_url=self.url, region_name=CREDENTIALS["AWS_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            config=botocore.config.Config(retries={"mode": "standard",
                                                                   "max_attempts": 2}))

    def create_bucket(self, prefix="registry") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"  # a valid S3 bucket name
        self.client().create_bucket(Bucket=name)
        return name
