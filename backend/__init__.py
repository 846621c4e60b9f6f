"""regionscribe's Label Studio ML backend: the HTTP app, the RQ job queue, the inference workers, the image fetcher.

backend/ reaches the model only through `model.describer.RegionDescriber` and the dataclasses in `model.asks`.
"""
