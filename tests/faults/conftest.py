"""Fault-injection fixtures: an S3 endpoint that can be broken on cue (see s3_endpoint.py), and a small Serve
app of its own (name APP, route ROUTE) that coexists with the serving tests' app in the same Ray session."""

from __future__ import annotations

import uuid

import pytest

from tests.faults.helpers import APP, ROUTE, small_served_app
from tests.faults.s3_endpoint import FORWARD, BreakableS3


@pytest.fixture
def breakable_s3(s3_server):
    """(endpoint, bucket): a fresh bucket on moto, reached through a BreakableS3 forwarder (rule: forward all)."""
    import boto3

    bucket = f"mel-fault-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    endpoint = BreakableS3(s3_server, lambda method, key, n: FORWARD).start()
    yield endpoint, bucket
    endpoint.stop()


@pytest.fixture(scope="module")
def fault_app(tmp_path_factory, ray_session):
    """The fault tests' Serve app (name APP, route ROUTE): (cfg, url, entities). Module-scoped: its replicas hold
    0.4 CPU of the 2-CPU test Ray, which would starve the index and training tests (see test_index_faults)."""
    with small_served_app(tmp_path_factory.mktemp("serve-faults"), APP, ROUTE) as served:
        yield served
