"""Small helpers every layer may use: run-directory numbering, file locks, atomic writes, secret masking.

This package imports nothing else of audiolab, so any module can import it.
"""
