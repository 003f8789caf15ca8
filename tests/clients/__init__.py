"""Tests of the clients in other languages (clients/js), against a real server."""
