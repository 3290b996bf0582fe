"""Image names -> Nix build -> closure layers -> tarballs -> config and manifest."""
