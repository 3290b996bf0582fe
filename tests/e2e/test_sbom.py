"""After a pull, the image's SBOM is found and fetched through the
referrers API: with plain HTTP, request by request as the distribution
spec writes them, and with ORAS's Python client (oras-py, from PyPI), the
one client with artifact support this machine can install; it pulls the
artifact once the referrers API has named it (oras-py lists no
referrers itself)."""
from __future__ import annotations

import hashlib
import json

import requests

from tests.conftest import need
from tests.e2e.conftest import run
from tests.e2e.test_clients import skopeo_copy

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CYCLONEDX = "application/vnd.cyclonedx+json"


def sbom_descriptor(server, name, tag="latest"):
    """The image's digest, and the SBOM artifact the referrers API lists for it."""
    head = requests.head(f"{server.url}/v2/{name}/manifests/{tag}",
                         headers={"Accept": OCI_MANIFEST})
    assert head.status_code == 200
    digest = head.headers["Docker-Content-Digest"]
    r = requests.get(f"{server.url}/v2/{name}/referrers/{digest}",
                     params={"artifactType": CYCLONEDX}, headers={"Accept": OCI_INDEX})
    assert r.status_code == 200 and r.headers["Content-Type"] == OCI_INDEX
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    [descriptor] = r.json()["manifests"]
    return digest, descriptor


def test_the_sbom_of_a_pulled_image_through_the_referrers_api(server, tmp_path):
    skopeo_copy(server, "shell/hello", tmp_path / "oci")
    digest, descriptor = sbom_descriptor(server, "shell/hello")
    assert descriptor["artifactType"] == CYCLONEDX
    artifact = requests.get(f"{server.url}/v2/shell/hello/manifests/{descriptor['digest']}",
                            headers={"Accept": OCI_MANIFEST})
    assert artifact.headers["Content-Type"] == OCI_MANIFEST
    assert "sha256:" + hashlib.sha256(artifact.content).hexdigest() == descriptor["digest"]
    manifest = artifact.json()
    assert manifest["subject"]["digest"] == digest
    [layer] = manifest["layers"]
    blob = requests.get(f"{server.url}/v2/shell/hello/blobs/{layer['digest']}")
    assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer["digest"]
    bom = blob.json()
    names = {c["name"] for c in bom["components"]}
    assert {"hello", "bash-interactive", "coreutils", "busybox"} <= names
    # what skopeo pulled (the OCI manifest, which it asks for first) is the
    # image the SBOM is about
    layout = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert layout["manifests"][0]["digest"] == digest


def test_oras_pulls_the_sbom_artifact(server, tmp_path):
    import oras.client
    _, descriptor = sbom_descriptor(server, "hello")
    client = oras.client.OrasClient(hostname=server.host, insecure=True)
    files = client.pull(target=f"{server.host}/hello@{descriptor['digest']}",
                        outdir=str(tmp_path / "out"))
    assert [f.rsplit("/", 1)[-1] for f in files] == ["sbom.cdx.json"]
    bom = json.loads((tmp_path / "out" / "sbom.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX"
    hello = next(c for c in bom["components"] if c["name"] == "hello")
    assert hello["licenses"] == [{"license": {"id": "GPL-3.0-or-later"}}]


def test_skopeo_reads_the_referrers_tag_schema(server):
    need("skopeo")
    digest, descriptor = sbom_descriptor(server, "hello")
    done = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                f"docker://{server.host}/hello:sha256-{digest[7:]}"])
    index = json.loads(done.stdout)
    assert index["mediaType"] == OCI_INDEX and index["manifests"] == [descriptor]
