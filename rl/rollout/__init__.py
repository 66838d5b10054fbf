"""Rollouts from SGLang servers over HTTP: the async client, the embedded server and the launcher."""
from rl.rollout.client import RolloutClient, RolloutError, WeightSyncError, wait_healthy
from rl.rollout.records import Sample, SampleRequest, group_requests, sample_seed

__all__ = ["RolloutClient", "RolloutError", "WeightSyncError", "wait_healthy", "Sample", "SampleRequest",
           "group_requests", "sample_seed"]
