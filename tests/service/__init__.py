"""Tests of the service package: bucketing, state stores, exposure log, metrics, settings."""
