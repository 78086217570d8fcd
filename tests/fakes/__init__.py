"""Fake provider servers (ComfyUI, Gemini API) that follow the real wire protocols; for tests and benchmarks only."""
