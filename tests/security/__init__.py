"""Attacks through the store: helpers of the tests in this folder."""
