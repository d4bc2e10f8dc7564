"""How --gpus is read: ids split on commas and spaces, kept verbatim, duplicates refused."""

from __future__ import annotations

from typing import List

import pytest

from simple_gpu_scheduler.cli.gpu_options import parse_gpu_ids
from simple_gpu_scheduler.errors import UsageError


@pytest.mark.parametrize("values, ids", [
    (["0,1,2"], ("0", "1", "2")),
    (["0", "1", "2"], ("0", "1", "2")),
    (["0,1", "2"], ("0", "1", "2")),
    (["3,1"], ("3", "1")),
    (["GPU-8a1b2c3d-aaaa-bbbb-cccc-0123456789ab"], ("GPU-8a1b2c3d-aaaa-bbbb-cccc-0123456789ab",)),
    (["MIG-GPU-8a1b2c3d/1/0,MIG-GPU-8a1b2c3d/2/0"],
     ("MIG-GPU-8a1b2c3d/1/0", "MIG-GPU-8a1b2c3d/2/0")),
])
def test_parse_gpu_ids(values: List[str], ids: tuple) -> None:
    assert parse_gpu_ids(values) == ids


@pytest.mark.parametrize("values", [[""], ["0,"], [",0"], ["0", ""], ["0,0"], ["1", "1"]])
def test_parse_gpu_ids_rejects(values: List[str]) -> None:
    with pytest.raises(UsageError):
        parse_gpu_ids(values)
