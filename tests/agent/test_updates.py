"""The update state machine against a local source (a test double for the server): what gets installed,
what is refused and why, health checks, probation, reverts and their reports."""

import time

import pytest

from fleet_agent.updates import UpdateRejected
from tests.agent.fakes import LocalSource, make_artifact, update_for

FULL_SUCCESS = ["assigned", "downloading", "downloaded", "verifying", "installing", "health_checking", "succeeded"]


def active_version(store):
    return store.active().version


def assert_untouched(store):
    assert store.active_slot() == "a"
    assert active_version(store) == "1.0.0"
    assert store.verify("a")
    assert list(store.download_dir.iterdir()) == []


def test_verified_update_is_installed_in_the_other_slot_and_reported(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo")
    updater, reports = make_updater(LocalSource(update_for(artifact), artifact))
    outcome = updater.check_and_apply()
    assert outcome.state == "succeeded"
    assert reports.states() == FULL_SUCCESS
    assert store.active_slot() == "b" and active_version(store) == "2.0.0"
    assert store.verify("b") and store.verify("a")  # the previous release stays as the fallback
    assert (store.active().model_path / "model.bin").is_file()
    assert updater.journal() is None


def test_update_already_running_is_not_applied_again(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo")
    updater, reports = make_updater(LocalSource(update_for(artifact), artifact))
    updater.check_and_apply()
    assert updater.check_and_apply() is None
    assert reports.states() == FULL_SUCCESS


def test_tampered_artifact_is_rejected_and_nothing_installed(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo")
    tampered = tmp_path / "tampered.tar.gz"
    content = bytearray(artifact.read_bytes())
    content[100] ^= 0xFF
    tampered.write_bytes(bytes(content))
    updater, reports = make_updater(LocalSource(update_for(artifact), tampered))
    outcome = updater.check_and_apply()
    assert (outcome.state, outcome.reason) == ("failed", "hash_mismatch")
    assert reports[-1][0::2] == ("failed", "hash_mismatch")
    assert_untouched(store)
    assert store.manifest("b") is None


def test_artifact_of_the_wrong_length_is_rejected(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo")
    longer = tmp_path / "longer.tar.gz"
    longer.write_bytes(artifact.read_bytes() + b"extra")
    updater, _reports = make_updater(LocalSource(update_for(artifact), longer))
    outcome = updater.check_and_apply()
    assert (outcome.state, outcome.reason) == ("failed", "length_mismatch")
    assert_untouched(store)


def test_update_for_other_hardware_is_rejected_before_download(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo")
    source = LocalSource(update_for(artifact, hardware=("jetson-orin",)), artifact)
    updater, reports = make_updater(source)
    outcome = updater.check_and_apply()
    assert (outcome.state, outcome.reason) == ("failed", "wrong_hardware")
    assert reports.states() == ["assigned", "failed"]
    assert source.downloads == 0
    assert_untouched(store)


def test_artifact_over_the_size_cap_is_rejected_before_download(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo", size=256 * 1024)
    source = LocalSource(update_for(artifact), artifact)
    updater, _reports = make_updater(source, max_artifact_bytes=100)
    outcome = updater.check_and_apply()
    assert (outcome.state, outcome.reason) == ("failed", "too_large")
    assert source.downloads == 0
    assert_untouched(store)


def test_lower_release_counter_is_rejected_unless_the_director_signs_a_rollback(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo", version="0.9.0")
    updater, _ = make_updater(LocalSource(update_for(artifact, version="0.9.0", release_counter=0), artifact))
    outcome = updater.check_and_apply()
    assert (outcome.state, outcome.reason) == ("failed", "release_counter_lower")
    assert_untouched(store)
    allowed, _ = make_updater(
        LocalSource(update_for(artifact, version="0.9.0", release_counter=0, rollback=True), artifact)
    )
    assert allowed.check_and_apply().state == "succeeded"
    assert active_version(store) == "0.9.0"


def test_rejection_by_the_source_is_reported_once(tmp_path, store, make_updater):
    source = LocalSource(None, reject=UpdateRejected("metadata_expired", "director timestamp expired", "x/1/m"))
    updater, reports = make_updater(source)
    assert updater.check_and_apply().reason == "metadata_expired"
    updater.check_and_apply()  # the retained assignment arrives again on every reconnect
    assert reports == [("failed", "x/1/m", "metadata_expired")]
    assert_untouched(store)


def test_failing_self_test_rolls_back_to_the_previous_model(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo", selftest="echo broken; exit 3")
    updater, reports = make_updater(LocalSource(update_for(artifact), artifact))
    outcome = updater.check_and_apply()
    assert (outcome.state, outcome.reason) == ("rolled_back", "health_check_failed")
    assert "broken" in outcome.detail
    assert reports.states()[-2:] == ["health_checking", "rolled_back"]
    assert store.active_slot() == "a" and active_version(store) == "1.0.0"
    assert updater.check_and_apply() is None  # not retried until a new assignment


def test_hanging_self_test_times_out_and_rolls_back(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo", selftest="sleep 30")
    updater, _ = make_updater(LocalSource(update_for(artifact), artifact), health_check_timeout_s=0.5)
    started = time.monotonic()
    outcome = updater.check_and_apply()
    assert (outcome.state, outcome.reason) == ("rolled_back", "health_check_timeout")
    assert time.monotonic() - started < 10
    assert active_version(store) == "1.0.0"


@pytest.mark.parametrize(("command", "expected"), [("true", "succeeded"), ("false", "rolled_back")])
def test_configured_health_check_command_decides(tmp_path, store, make_updater, command, expected):
    artifact = make_artifact(tmp_path / "repo", selftest=None)
    script = tmp_path / "check.sh"
    script.write_text(
        f'#!/bin/sh\ntest -f "$FLEET_MODEL_PATH/model.bin" && test "$FLEET_MODEL_VERSION" = 2.0.0 && {command}\n'
    )
    script.chmod(0o755)
    updater, _ = make_updater(LocalSource(update_for(artifact), artifact), health_check_command=str(script))
    assert updater.check_and_apply().state == expected
    assert active_version(store) == ("2.0.0" if expected == "succeeded" else "1.0.0")


def test_probation_commits_when_it_ends_and_reverts_on_failure(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo")
    updater, reports = make_updater(LocalSource(update_for(artifact), artifact), probation_s=0.3)
    assert updater.check_and_apply() is None
    assert updater.in_probation() and active_version(store) == "2.0.0"
    assert updater.probation_tick() is None
    time.sleep(0.35)
    assert updater.probation_tick().state == "succeeded"
    assert reports.states()[-1] == "succeeded"

    v3 = make_artifact(tmp_path / "repo", version="3.0.0")
    updater.source = LocalSource(update_for(v3, version="3.0.0", release_counter=3), v3)
    updater.check_and_apply()
    outcome = updater.probation_tick(failed_reason="probation_errors")
    assert (outcome.state, outcome.reason) == ("rolled_back", "probation_errors")
    assert active_version(store) == "2.0.0"


def test_restart_during_probation_reverts(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo")
    updater, _ = make_updater(LocalSource(update_for(artifact), artifact), probation_s=60)
    updater.check_and_apply()
    restarted, reports = make_updater(LocalSource(update_for(artifact), artifact), probation_s=60)
    outcome = restarted.recover()
    assert (outcome.state, outcome.reason) == ("rolled_back", "interrupted_probation")
    assert active_version(store) == "1.0.0"
    assert reports[-1][0] == "rolled_back"


def test_interrupted_download_resumes_where_it_stopped(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo", size=512 * 1024)
    update = update_for(artifact)
    part = store.download_dir / f"{update.sha256}.part"
    part.write_bytes(artifact.read_bytes()[:1000])
    (store.root / "journal.json").write_text(
        f'{{"phase": "downloading", "update": {{"target": "t", "sha256": "{update.sha256}"}}}}'
    )
    source = LocalSource(update, artifact)
    updater, _reports = make_updater(source)
    assert updater.recover().reason == "interrupted_downloading"
    assert part.stat().st_size == 1000  # kept for resuming
    assert updater.check_and_apply().state == "succeeded"
    assert active_version(store) == "2.0.0"


def test_corrupted_active_slot_is_replaced_by_the_verified_one_at_start(tmp_path, store, make_updater):
    artifact = make_artifact(tmp_path / "repo")
    updater, _ = make_updater(LocalSource(update_for(artifact), artifact))
    updater.check_and_apply()
    with open(store.slot_path("b") / "artifact", "r+b") as fh:
        fh.write(b"rot")
    restarted, reports = make_updater(LocalSource(None))
    restarted.recover()
    assert store.active_slot() == "a" and store.verify("a")
    assert reports[-1][0::2] == ("rolled_back", "slot_corrupt")


def test_unreachable_repository_is_retried_quietly(tmp_path, store, make_updater):
    source = LocalSource(None, reject=UpdateRejected("download_failed", "connection refused", "unknown"))
    updater, reports = make_updater(source)
    assert updater.check_and_apply().reason == "download_failed"
    assert reports == []
    source.reject = None
    artifact = make_artifact(tmp_path / "repo")
    source.update, source.serve = update_for(artifact), artifact
    assert updater.check_and_apply().state == "succeeded"
