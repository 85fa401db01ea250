"""Training losses: named, weighted terms built from config."""
