"""Bench's matrix as ``run.json["bench"]`` records it."""

from __future__ import annotations

import dataclasses
import json

from loadtests.commands.bench import Group, GroupRecord, full_matrix, matrix_record, quick_matrix


def test_a_group_record_holds_every_field_of_the_group_in_order() -> None:
    fields = [f.name for f in dataclasses.fields(Group)]
    assert list(GroupRecord.__annotations__) == fields  # a field added to Group must reach run.json
    for group in [*full_matrix(), *quick_matrix()]:
        record = group.record()
        assert list(record) == fields
        assert record["states"] == {t: list(s) for t, s in group.states.items()}


def test_the_bench_record_is_json_with_the_makers_entries() -> None:
    record = matrix_record(quick_matrix(), 1.5, quick=True, budget_s=600.0)
    assert list(record) == ["groups", "wall_s", "quick", "budget_s"]
    assert json.loads(json.dumps(record)) == record
