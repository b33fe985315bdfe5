"""Seeded, bounded fuzzing (a few seconds) of the container, `vidarc inspect`, both payload parsers and the
GLVC, GVC and x264 decoders (`bench/fuzz.py`; tiny random-weight models): every input is accepted or
refused with the target's documented one-line error, never another exception (nor, for `inspect`, a
markup error or a raw control character printed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench import fuzz
from codec.errors import CorruptPayloadError
from pipeline.format.container import TIMESTAMPS_ATTACHMENT, ContainerError

ITERATIONS = {
    "container": 1500,
    "inspect": 150,
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
    """Each target's seed input, unmutated, is what the fuzzer counts as accepted (neither a refusal
    nor a crash): the mutations start from something every parser and decoder takes."""
    for target in targets.values():
        unmutated = dataclasses.replace(target, mutate=lambda data, rng: data)
        stats = fuzz.run_target(unmutated, seed=0, iterations=1)
        assert (stats.accepted, stats.refused, stats.crashes) == (1, 0, []), target.name


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


@pytest.mark.timeout(60, method="thread")  # "1e-100000000" once made Fraction compute for minutes
@pytest.mark.parametrize("time_base", fuzz.HOSTILE_TIME_BASES, ids=repr)
def test_every_hostile_time_base_is_refused_or_means_no_timestamps(time_base: object) -> None:
    area, header, records = fuzz._split_container(fuzz.sample_container())
    fields = json.loads(header)
    for attachment in fields["attachments"]:
        if attachment["name"] == TIMESTAMPS_ATTACHMENT:
            attachment["info"]["time_base"] = time_base
    data = fuzz._join_container(area, json.dumps(fields).encode(), records)
    if time_base in (None, "", 0):  # no time base: the object has no timestamps to read
        fuzz.parse_container(data)
        return
    with pytest.raises(ContainerError, match="time base is malformed"):
        fuzz.parse_container(data)


@pytest.mark.parametrize("kind", range(8))
def test_forged_frame_counts_are_refused(kind: int) -> None:
    """Counts that tile the index but no payload holds: no GOP at all or empty payloads are refused by
    the index; one huge GOP here by the timestamps (10 for more frames); restore never sizes anything
    by them (tests/test_hostile_archives.py)."""
    import random

    area, header, records = fuzz._split_container(fuzz.sample_container())
    header, records = fuzz._forged_counts(json.loads(header), records, random.Random(kind))
    data = fuzz._join_container(area, header, records)
    with pytest.raises(ContainerError):
        fuzz.parse_container(data)
