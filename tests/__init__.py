"""Test suite; a regular package so `tests.fakes` is ours, not a site-packages `tests`."""
