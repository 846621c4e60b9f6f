"""regionscribe's region-aware multimodal model (GPT4RoI-style spatial instruction tuning).

This package knows nothing of Label Studio, Redis or HTTP. The backend reaches it through
`regionscribe.model.describer.RegionDescriber` (inference) and `regionscribe.training.stages.train` (two-stage tuning).
"""
