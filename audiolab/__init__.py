"""audiolab."""
