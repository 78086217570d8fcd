"""CV side of vidpipe: frame sampling, face engines and clip analysis (heavy imports stay inside functions)."""
