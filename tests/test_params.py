"""Parameter validation and the fixed merge order of parameter sources."""

from __future__ import annotations

import datetime as dt

import pytest

from runbook_lib import params as P
from runbook_lib.cli import _parser, build_parameters
from runbook_lib.errors import ParameterError
from runbook_lib.procedures import token_reversal as tr


def test_aware_timestamps_only():
    assert P.parse_aware_datetime("2025-12-01T00:00:00Z", "since") == dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
    assert P.parse_aware_datetime("2025-12-01T01:00:00+01:00", "since") == dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
    with pytest.raises(ParameterError, match="has no time zone"):
        P.parse_aware_datetime("2025-12-01T00:00:00", "since")
    with pytest.raises(ParameterError, match="not an ISO-8601"):
        P.parse_aware_datetime("12/01/2025", "since")


def test_unknown_and_ill_typed_parameters_are_errors():
    with pytest.raises(ParameterError, match="'sinse': unknown parameter"):
        P.validate(tr.Params, {"sinse": "2025-12-01T00:00:00Z"})
    with pytest.raises(ParameterError, match="top_users"):
        P.validate(tr.Params, {"since": "2025-12-01T00:00:00Z", "top_users": "many"})
    with pytest.raises(ParameterError, match="lock_timeout"):
        P.validate(tr.Params, {"since": "2025-12-01T00:00:00Z", "lock_timeout": "forever"})
    with pytest.raises(ParameterError, match="approved_plan"):
        P.validate(tr.Params, {"since": "2025-12-01T00:00:00Z", "approved_plan": "'; drop table x; --"})
    with pytest.raises(ParameterError, match="mode"):
        P.validate(tr.Params, {"since": "2025-12-01T00:00:00Z", "mode": "yolo"})


def test_yaml_keeps_timestamps_as_text_so_naive_ones_are_refused(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("since: 2025-12-01T00:00:00\n")
    merged = P.merge_sources([f])
    assert merged["since"] == "2025-12-01T00:00:00"
    with pytest.raises(ParameterError, match="no time zone"):
        P.validate(tr.Params, merged)


def test_merge_order_files_then_pairs_then_flags(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("since: '2025-01-01T00:00:00Z'\nnegative_policy: clamp\ntop_users: 5\n")
    b.write_text("negative_policy: skip\n")
    args = _parser().parse_args([
        "run", "token-reversal", "-f", str(a), "-f", str(b), "-p", "top_users", "7",
        "-p", "user_ids", "[u1, u2]", "--execute", "--approve", "abcdef0123456789abcdef01",
    ])
    merged = build_parameters(args)
    assert merged == {
        "since": "2025-01-01T00:00:00Z", "negative_policy": "skip", "top_users": 7, "user_ids": ["u1", "u2"],
        "mode": "execute", "approved_plan": "abcdef0123456789abcdef01",
    }
    p = P.validate(tr.Params, merged)
    assert p.top_users == 7 and p.negative_policy == "skip"


def test_comma_separated_lists_and_bad_files(tmp_path):
    p = P.validate(tr.Params, {"since": "2025-12-01T00:00:00Z", "voucher_codes": "A, B"})
    assert p.voucher_codes == ["A", "B"]
    with pytest.raises(ParameterError, match="does not exist"):
        P.read_parameter_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParameterError, match="mapping"):
        P.read_parameter_file(bad)


def test_cli_values_become_lists_or_maps_only_when_written_so():
    from runbook_lib.params import parse_cli_value

    assert parse_cli_value("snapshot: taken at 10:05") == "snapshot: taken at 10:05"
    assert parse_cli_value("- a") == "- a"
    assert parse_cli_value("[a, b]") == ["a", "b"]
    assert parse_cli_value("{a: 1}") == {"a": 1}
    assert parse_cli_value("true") is True and parse_cli_value("12") == 12
    assert parse_cli_value("2025-12-01T00:00:00Z") == "2025-12-01T00:00:00Z"


def test_confirm_target_never_comes_from_a_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("since: 2025-12-01T00:00:00Z\nconfirm_target: app\n")
    with pytest.raises(ParameterError, match="'confirm_target' cannot come from a file"):
        P.merge_sources([f])
    g = tmp_path / "q.yaml"
    g.write_text("since: 2025-12-01T00:00:00Z\n")
    assert P.merge_sources([g], [], {"confirm_target": "app"})["confirm_target"] == "app"


@pytest.mark.parametrize(
    ("value", "hint"),
    [("2025-12-01", "2025-12-01T00:00:00Z"), ("2025-12-01T10:30", "2025-12-01T10:30:00Z"),
     ("2025-12-01 10:30:05", "2025-12-01T10:30:05Z"), ("2025-12-01T10:30:05.25", "2025-12-01T10:30:05.250000Z")],
)
def test_a_naive_timestamp_gets_a_full_example_that_parses(value, hint):
    with pytest.raises(ParameterError, match="has no time zone") as err:
        P.parse_aware_datetime(value, "since")
    assert f"e.g. {hint} (UTC)" in str(err.value)
    assert P.parse_aware_datetime(hint, "since") is not None  # the hint itself is accepted: it never loops


def test_a_date_with_a_zone_is_midnight_in_that_zone():
    assert P.parse_aware_datetime("2025-12-01Z", "since") == dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
    assert P.parse_aware_datetime("2025-12-01+01:00", "since") == dt.datetime(2025, 11, 30, 23, tzinfo=dt.UTC)
    with pytest.raises(ParameterError, match="not an ISO-8601 timestamp such as 2025-12-01T00:00:00Z"):
        P.parse_aware_datetime("2025-12-01ZZ", "since")


def test_errors_about_several_parameters_name_them_not_parameters():
    with pytest.raises(ParameterError) as err:
        P.validate(tr.Params, {"since": "2025-12-03T00:00:00Z", "until": "2025-12-01T00:00:00Z"})
    assert "'parameters'" not in str(err.value) and "'since'" in str(err.value) and "'until'" in str(err.value)
    assert err.value.parameter == "since"
    with pytest.raises(ParameterError) as missing:
        P.validate(tr.Params, {})
    assert str(missing.value).startswith("'since' is required") and missing.value.parameter == "since"
