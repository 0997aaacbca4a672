"""The one root of the fixtures shared between sessions (../shared/fixtures beside the checkout). A missing
fixture fails the test that needs it: it never skips, so a plain checkout cannot pass without checking it."""
import pathlib

import pytest

from tests.helpers.paths import ROOT

SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"


def shared_fixture(name: str) -> pathlib.Path:
    """The path of `name` under the shared fixtures; fails the test when it is not there."""
    path = SHARED_FIXTURES / name
    if not path.exists():
        pytest.fail(f"shared fixture {path} is missing (the checkout needs ../shared beside it)")
    return path
