"""Pure computation: encoders, CAM, decoder, losses, box extraction, metrics (no file I/O)."""
