"""regionscribe's Label Studio ML backend: the HTTP app, the RQ job queue, the inference workers, the image fetcher.

backend/ reaches the model only through `regionscribe.model.describer.RegionDescriber` and the dataclasses in `regionscribe.model.asks`.
"""
