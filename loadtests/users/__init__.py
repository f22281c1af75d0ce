"""Locust users, one per transport, on the runner's rollout; the merge of their raw samples into one run."""
