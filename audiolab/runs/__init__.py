"""Numbered run directories, their records, loggers and the session that ties a run together."""
