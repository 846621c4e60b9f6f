"""The feedback loop end to end, small: withheld-concept corrections through /webhook as Label Studio sends them ->
the policy triggers a run -> two-stage tuning -> promotion -> the inference worker serves the new version.
(benchmarks/feedback_loop.py runs the same code at full size and prints the accuracy figures.)"""
import pytest

from tests.builders import benchmark_module


@pytest.mark.slow
def test_corrections_with_a_new_concept_produce_a_served_version_that_names_it():
    with benchmark_module("feedback_loop") as loop:
        out = loop.run_loop(regions=40, stage1_steps=5, stage2_steps=120, base_scenes=8, eval_scenes=12,
                            tolerance=100.0, cider_tolerance=1000.0, timeout=600, seed=21, log=lambda m: None)
    published = out["published"]
    assert published is not None, out
    assert published["accepted"] and published["regions"] == out["corrected_regions"] <= 40
    # the worker reloaded the promoted version between jobs and served a prediction with it
    assert out["loop_seconds_last_correction_to_serving"] is not None
    assert out["after"]["model_version"] == published["version"] != out["before"]["model_version"]
    # the withheld concept: never named before, named after (held-out novel scenes)
    before, after = out["before"]["new_concept"]["overall"], out["after"]["new_concept"]["overall"]
    assert before <= 10, out["before"]["new_concept"]
    assert after > before + 20, (out["before"]["new_concept"], out["after"]["new_concept"])
