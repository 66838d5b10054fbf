"""Rollouts from SGLang servers over HTTP: the async client, the embedded server and the launcher."""
