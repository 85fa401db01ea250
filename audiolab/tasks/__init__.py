"""Tasks turn a batch of clean audio into the (model input, target) pair a run learns."""
