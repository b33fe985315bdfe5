"""Seeded, bounded fuzzing (a few seconds) of the container, both payload parsers and the GLVC, GVC and
x264 decoders (`bench/fuzz.py`; tiny random-weight models): every input is accepted or refused with the
target's documented one-line error, never another exception."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import fuzz
from codec.errors import CorruptPayloadError

ITERATIONS = {
    "container": 1500,
    "glvc-payload": 1500,
    "gvc-payload": 1500,
    "glvc-decode": 150,
    "gvc-decode": 150,
    "x264-decode": 300,
}


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, fuzz.Target]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    built = fuzz.build_targets(set(ITERATIONS), tmp_path_factory.mktemp("fuzz"))
    torch.set_num_threads(threads)
    return {t.name: t for t in built}


@pytest.mark.parametrize("name", sorted(ITERATIONS))
def test_no_input_crashes_a_parser_or_decoder(targets: dict[str, fuzz.Target], name: str) -> None:
    stats = fuzz.run_target(targets[name], seed=11, iterations=ITERATIONS[name])
    assert stats.crashes == [], stats.crashes
    assert stats.inputs == ITERATIONS[name]
    # the mutations bite (many inputs are refused) and some still reach past the checks
    assert stats.refused > stats.inputs // 5 and stats.accepted > 0


def test_the_valid_seed_inputs_are_accepted(targets: dict[str, fuzz.Target]) -> None:
    for target in targets.values():
        target.run(target.seed_input)


def test_a_gvc_shift_that_divides_by_zero_is_refused_at_parse_time(targets: dict[str, fuzz.Target]) -> None:
    """Issue 11: shift ≈ 6e-22 with a valid CRC raised ZeroDivisionError in the sampler's time grid."""
    from codec.gvc.bitstream import GvcPayload

    target = targets["gvc-decode"]
    parsed = GvcPayload.from_bytes(target.seed_input)
    for shift in (6e-22, float("nan"), float("inf"), -1.0):
        hostile = dataclasses.replace(parsed, shift=shift).to_bytes()
        with pytest.raises(CorruptPayloadError, match="shift"):
            target.run(hostile)


def test_the_fuzz_command_reports_one_json_line_per_target(tmp_path: Path) -> None:
    stats = fuzz.run_target(fuzz.container_target(), seed=0, iterations=50)
    record = stats.as_record()
    assert record["inputs"] == 50 and record["accepted"] + record["refused"] == 50
