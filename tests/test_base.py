"""Tests for ebmalgebra/base.py: the capability record every node carries."""

import pytest

from ebmalgebra import Capabilities


def test_capabilities_are_built_by_keyword_only():
    """Four positional bools are easy to misorder, so the record refuses them."""
    with pytest.raises(TypeError):
        Capabilities(True, True, False, False)
    capabilities = Capabilities(has_energy=True, has_score=True, normalizer_known=False,
                                can_sample=False)
    assert capabilities.supports("energy") and not capabilities.supports("normalizer")
