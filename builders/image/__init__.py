"""What an image is: the packages and platform its name asks for, its
config and manifests in both formats, its SBOM, and the record that serves
it, with the keys it is kept under."""
