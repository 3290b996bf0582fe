"""Build, cache and storage metrics (Prometheus).

Under gunicorn these live in prometheus_client's multiprocess files, so
gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports
this module.
"""
from prometheus_client import Counter, Gauge, Histogram

BUILDS = Counter("registry_builds", "Image builds run, by outcome", ["outcome"])
BUILD_FAILURES = Counter(
    "registry_build_failures", "Builds that failed, by kind (verdict: the image's own; timeout; "
    "machine: stopped by the machine; passing: the source or storage) and cause",
    ["kind", "cause"])
BUILD_SECONDS = Histogram(
    "registry_build_duration_seconds", "Time to build an image, by outcome", ["outcome"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200))
BUILDS_IN_FLIGHT = Gauge("registry_builds_in_flight", "Builds running now",
                         multiprocess_mode="livesum")
BUILDS_QUEUED = Gauge("registry_builds_queued", "Builds waiting for a build slot",
                      multiprocess_mode="livesum")
MANIFEST_CACHE = Counter("registry_manifest_cache", "Manifest lookups by tag, by where "
                         "they were answered from", ["result"])
BYTES_STORED = Counter("registry_stored_bytes", "Bytes of blobs written to storage")
SOURCE_UP = Gauge("registry_package_source_up",
                  "Whether the package source answered the last time it was asked (1) or not (0)",
                  multiprocess_mode="livemostrecent")
JOBS = Gauge("registry_build_jobs", "Image jobs running now, by phase", ["phase"],
             multiprocess_mode="livesum")
NIX_CACHE_COPIES = Counter("registry_nix_cache_copies", "Closures copied to the Nix binary "
                           "cache (NIXERY_NIX_CACHE), by outcome", ["outcome"])
NIX_BUILDERS = Gauge("registry_nix_builders_reachable", "Remote builders Nix is set up with: "
                     "those that answered the last readiness check, and all of them", ["state"],
                     multiprocess_mode="livemax")
