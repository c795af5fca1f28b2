"""Fixtures for the Laravel wire-format tests (the PHP oracle itself is tests/support/php.py)."""
from __future__ import annotations

import pytest

from tests.support.php import PHP_AVAILABLE, run_oracle


@pytest.fixture(scope="session")
def php_payloads():
    if not PHP_AVAILABLE:
        pytest.skip("php + Laravel not installed")
    rows = run_oracle("payloads")
    assert len(rows) > 40
    return rows
