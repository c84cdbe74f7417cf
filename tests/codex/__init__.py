"""Tests against the real Codex CLI, and the fake model server they drive it with."""

import pytest

# Shared assertions: rewritten so a failing check shows its values.
pytest.register_assert_rewrite("tests.codex.expected")
