"""``spec.job_type`` keys learned throughput (stored, shown): empty or a name."""

from __future__ import annotations

import grpc
import pytest

from controlplane.api.errors import status_of
from controlplane.model.catalogue import default_catalogue
from controlplane.model.spec import SpecError
from controlplane.model.spec_validation import validate_spec
from controlplane.services.throughput import job_type
from xinhe.v1 import common_pb2


def spec(kind: str) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(name="train", queue="lab-a/default", command=["python"],
                              replicas=1, job_type=kind)


@pytest.mark.parametrize("kind", ["", "llama-7b", "resnet50.v2", "A" * 128, "bert_base"])
def test_valid_job_types(kind: str) -> None:
    validate_spec(spec(kind), default_catalogue())
    assert job_type(spec(kind)) == (kind or "train")


@pytest.mark.parametrize("kind", [" llama", "llama 7b", "-lead", ".hidden", "A" * 129,
                                  "llama/7b", "模型", "x\n", "a\x00b"])
def test_invalid_job_types_are_invalid_argument_naming_the_field(kind: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(spec(kind), default_catalogue())
    assert info.value.field == "spec.job_type"
    code, message = status_of(info.value)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.job_type" in message and "valid job type" in message
