"""vidpipe: per-scene AI video generation as a Celery chain with progressive enrichment of an asset registry."""

__version__ = "0.1.0"
