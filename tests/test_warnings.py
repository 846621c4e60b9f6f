"""pytest's filterwarnings (pyproject.toml): a DeprecationWarning or FutureWarning fails the test that raised it,
whether our own module raised it or a dependency raised it about our call (attributed to one of its own modules, as
transformers' deprecated-argument warnings are)."""
from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
@pytest.mark.parametrize("module", ["regionscribe.model.generation", "regionscribe.backend.web.app", "benchmarks.feedback_loop",
                                    "torch.nn.modules.module", "transformers.utils.deprecation"])
def test_a_deprecation_is_an_error(category, module):
    with pytest.raises(category, match="is deprecated"):
        warnings.warn_explicit("`old` is deprecated", category, f"{module.replace('.', '/')}.py", 1, module=module)


def test_other_warnings_stay_warnings():
    with pytest.warns(UserWarning):
        warnings.warn("just a warning", UserWarning)
