"""pytest's filterwarnings (pyproject.toml): a DeprecationWarning or FutureWarning raised from the project's own modules
fails the test that raised it; one that a dependency raises from its own modules stays a warning."""
from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
@pytest.mark.parametrize("module", ["model.generation", "backend.app", "benchmarks.feedback_loop", "tests.conftest"])
def test_a_deprecation_in_our_code_is_an_error(category, module):
    with pytest.raises(category, match="is deprecated"):
        warnings.warn_explicit("`old` is deprecated", category, f"{module.replace('.', '/')}.py", 1, module=module)


@pytest.mark.parametrize("module", ["transformers.utils.generic", "models_of_someone_else", "backendish"])
def test_a_dependency_deprecation_stays_a_warning(module):
    with pytest.warns(FutureWarning):
        warnings.warn_explicit("`old` is deprecated", FutureWarning, "x.py", 1, module=module)
