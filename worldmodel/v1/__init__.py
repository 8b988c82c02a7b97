"""Python generated from proto/worldmodel/v1 (do not edit: `make proto`)."""
