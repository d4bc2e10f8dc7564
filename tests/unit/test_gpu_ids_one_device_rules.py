"""Two ``--gpus`` ids that name one device are a usage error (pure parts).

Numbers are compared as numbers (``0`` and ``00`` are one GPU to CUDA); UUIDs,
UUID prefixes and MIG ids are compared through the devices they name.
"""

from __future__ import annotations

from typing import List

import pytest

from simple_gpu_scheduler.cli.gpu_options import parse_gpu_ids
from simple_gpu_scheduler.errors import UsageError
from simple_gpu_scheduler.model.devices import Device, same_device

UUID0 = "GPU-00000000-1111-2222-3333-000000000000"
UUID1 = "GPU-00000001-1111-2222-3333-000000000001"
MIG0 = "MIG-00000001-aaaa-bbbb-cccc-000000000001"
MIG1 = "MIG-00000002-aaaa-bbbb-cccc-000000000002"

DEVICES = (
    Device(id="0", index="0", uuid=UUID0, name="A100"),
    Device(id="1", index="1", uuid=UUID1, name="A100"),
    Device(id=MIG0, index="2:0", uuid=MIG0, name="MIG", mig_parent="2"),
    Device(id=MIG1, index="2:1", uuid=MIG1, name="MIG", mig_parent="2"),
)


@pytest.mark.parametrize("values, first, second", [
    (["0,00"], "0", "00"),
    (["1", "01"], "1", "01"),
    (["007,3,7"], "007", "7"),
])
def test_numbers_that_are_one_gpu_are_a_usage_error(
        values: List[str], first: str, second: str) -> None:
    with pytest.raises(UsageError) as error:
        parse_gpu_ids(values)
    message = str(error.value)
    assert "\n" not in message
    assert f" {first} " in message and f" {second} " in message
    assert "same GPU" in message


@pytest.mark.parametrize("values", [["0,10"], ["1", "11", "101"], [f"0,{UUID0}"]])
def test_different_numbers_and_unresolved_uuids_are_fine(values: List[str]) -> None:
    # Without hardware a UUID cannot be compared with a number: it passes here.
    assert parse_gpu_ids(values) == tuple(",".join(values).split(","))


@pytest.mark.parametrize("ids, pair", [
    (["0", UUID0], ("0", UUID0)),
    ([UUID1, "1"], (UUID1, "1")),
    (["00", UUID0[:12]], ("00", UUID0[:12])),  # a unique prefix, as CUDA reads it
    ([MIG0, "1", MIG0[:14]], (MIG0, MIG0[:14])),
    (["2", MIG1], ("2", MIG1)),  # GPU 2 is split: "2" means its instances
])
def test_same_device_finds_two_ids_of_one_device(ids: List[str], pair: tuple) -> None:
    found = same_device(ids, DEVICES)
    assert found is not None and found[:2] == pair


@pytest.mark.parametrize("ids", [
    ["0", "1"], ["0", UUID1], [MIG0, MIG1], ["0", "7", "GPU-ffff"],  # unknown: nothing
    [MIG0[:10], MIG0],  # an ambiguous prefix names no device, as in CUDA
    [],
])
def test_same_device_is_none_when_all_differ(ids: List[str]) -> None:
    assert same_device(ids, DEVICES) is None
