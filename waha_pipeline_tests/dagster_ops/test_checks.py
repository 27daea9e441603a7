"""The per-chunk asset checks on `committed_rows`, against PostgreSQL, the simulator over HTTP and a real Dagster
instance in DAGSTER_HOME: an import evaluates them per chunk partition and they pass; a row changed behind the
importer's back fails the check it breaks, naming the row; re-materializing the chunk repairs what the importer
owns (messages, sessions) and the checks pass again; an orphan contact stays reported, since no import deletes
contacts."""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from waha_pipeline.cli.main import main
from waha_pipeline.crm.schema import chat_coverage, messages, sessions
from waha_pipeline.definitions import build_definitions
from waha_pipeline.defs.assets import channel_plan, chunk_import
from waha_pipeline.defs.checks import ACCOUNTED, CHECK_KEYS, CONTACTS, SESSIONS
from waha_pipeline_tests.crm_state import latest_plan

SUCCEEDED, FAILED = "SUCCEEDED", "FAILED"


def latest(instance: dg.DagsterInstance, chunk_key: str) -> dict[str, Any]:
    """check name -> (SUCCEEDED | FAILED, metadata) of its latest evaluation on that chunk partition."""
    # The instance's public event query (deprecated toward Dagster 2.0; the per-partition check record lookups
    # take a private filter type), newest first.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        records = instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000
        )
    out: dict[str, Any] = {}
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data  # type: ignore[union-attr]
        if evaluation.partition != chunk_key or evaluation.check_name in out:
            continue
        metadata = {k: v.value for k, v in evaluation.metadata.items()}
        out[evaluation.check_name] = (SUCCEEDED if evaluation.passed else FAILED, metadata)
    return out


def execute_checks(instance: dg.DagsterInstance, chunk_key: str) -> dg.ExecuteInProcessResult:
    """What the UI's "Execute checks" runs: the chunk step with only the checks selected, importing nothing."""
    base = build_definitions()
    job = dg.define_asset_job("chunk_checks", selection=dg.AssetSelection.checks(*CHECK_KEYS))
    defs = dg.Definitions(assets=[channel_plan, chunk_import], jobs=[job], resources=base.resources)
    # a run's partition is its tag (the UI's launch sets it so); `partition_key=` wants a selected asset
    return defs.resolve_job_def("chunk_checks").execute_in_process(
        instance=instance, tags={"dagster/partition": chunk_key}, raise_on_error=False
    )


@pytest.fixture
def imported(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main(["import", "demo"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    return latest_plan(cli_env["DATABASE_URL"])


def test_import_evaluates_every_check_on_every_chunk_and_they_pass(imported: dict[str, Any]) -> None:
    instance = dg.DagsterInstance.get()
    keys = [c["key"] for c in imported["chunks"]]
    assert len(keys) > 1
    for key in keys:
        results = latest(instance, key)
        assert set(results) == {ACCOUNTED, SESSIONS, CONTACTS}, key
        for name, (status, metadata) in results.items():
            assert status == SUCCEEDED, (key, name, metadata)
        assert results[ACCOUNTED][1]["fetched"] == (
            results[ACCOUNTED][1]["messages"] + results[ACCOUNTED][1]["rejects"] + results[ACCOUNTED][1]["skipped"]
        )
        assert results[ACCOUNTED][1]["fetched"] > 0
    # what the UI's per-partition check health reads: every chunk passed, judged on its latest materialization
    infos = instance.event_log_storage.get_asset_check_partition_info(sorted(CHECK_KEYS, key=lambda k: k.name))
    assert {(i.check_key.name, i.partition_key) for i in infos} == {
        (name, key) for name in (ACCOUNTED, SESSIONS, CONTACTS) for key in keys}
    assert all(i.latest_execution_status.value == SUCCEEDED and i.is_current for i in infos)


def rematerialize(instance: dg.DagsterInstance, chunk_key: str) -> None:
    result = build_definitions().resolve_job_def("chunk_import_job").execute_in_process(
        instance=instance, partition_key=chunk_key, raise_on_error=False
    )
    assert result.success


def chunk_contact(url: str, chunk: dict[str, Any]) -> str:
    """A contact of the chunk's chats with more than one message."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(messages.c.contact_id).where(messages.c.chat_id.in_(chunk["chat_ids"]))
            .group_by(messages.c.contact_id).having(sa.func.count() > 1).order_by(messages.c.contact_id).limit(1)
        ).scalar_one()
    engine.dispose()
    return str(row)


def corrupt_first_row(url: str, table: sa.Table, contact: str, **values: Any) -> str:
    """Change the contact's first row of `table` (by id) behind the importer's back; returns its id."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            row_id = str(conn.execute(
                sa.select(table.c.id).where(table.c.contact_id == contact).order_by(table.c.id).limit(1)
            ).scalar_one())
            conn.execute(sa.update(table).where(table.c.id == row_id).values(**values))
    finally:
        engine.dispose()
    return row_id


def test_a_session_count_changed_behind_the_importer_fails_its_check_until_the_chunk_is_rerun(
    cli_env: dict[str, str], imported: dict[str, Any]
) -> None:
    instance, url = dg.DagsterInstance.get(), cli_env["DATABASE_URL"]
    chunk = imported["chunks"][0]
    contact = chunk_contact(url, chunk)
    session_id = corrupt_first_row(url, sessions, contact, message_count=sessions.c.message_count + 1)

    assert execute_checks(instance, chunk["key"]).success  # a failed check is a result, not a failed run
    results = latest(instance, chunk["key"])
    status, metadata = results[SESSIONS]
    assert status == FAILED
    assert metadata["sessions_wrong"] == 1 and any(session_id in o for o in metadata["offenders"])
    assert results[ACCOUNTED][0] == SUCCEEDED and results[CONTACTS][0] == SUCCEEDED
    other = imported["chunks"][1]["key"]
    assert latest(instance, other)[SESSIONS][0] == SUCCEEDED

    rematerialize(instance, chunk["key"])
    assert {name: status for name, (status, _) in latest(instance, chunk["key"]).items()} == dict.fromkeys(
        (ACCOUNTED, SESSIONS, CONTACTS), SUCCEEDED)


def test_a_contacts_messages_deleted_behind_the_importer_stay_reported_until_their_coverage_is_dropped(
    cli_env: dict[str, str], imported: dict[str, Any]
) -> None:
    """The chunk's chats' coverage vouches for the deleted rows, so a re-run fetches only what is newer and cannot
    bring them back; the checks keep saying so. Without the coverage the re-run reads the chats again."""
    instance, url = dg.DagsterInstance.get(), cli_env["DATABASE_URL"]
    chunk = imported["chunks"][0]
    contact = chunk_contact(url, chunk)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        chats = sorted(set(conn.execute(
            sa.select(messages.c.chat_id).where(messages.c.contact_id == contact)).scalars()))
        deleted = conn.execute(sa.delete(messages).where(messages.c.contact_id == contact)).rowcount
        conn.execute(sa.delete(sessions).where(sessions.c.contact_id == contact))
    assert deleted > 1

    assert execute_checks(instance, chunk["key"]).success
    results = latest(instance, chunk["key"])
    assert results[CONTACTS][0] == FAILED
    assert results[CONTACTS][1]["offenders"] == [f"contact {contact}: no message"]
    status, metadata = results[ACCOUNTED]
    assert status == FAILED and metadata["stored_messages"] == metadata["messages"] - deleted

    rematerialize(instance, chunk["key"])
    assert latest(instance, chunk["key"])[CONTACTS][0] == FAILED

    with engine.begin() as conn:
        conn.execute(sa.delete(chat_coverage).where(chat_coverage.c.chat_id.in_(chats)))
    engine.dispose()
    rematerialize(instance, chunk["key"])
    results = latest(instance, chunk["key"])
    assert {name: status for name, (status, _) in results.items()} == dict.fromkeys(
        (ACCOUNTED, SESSIONS, CONTACTS), SUCCEEDED), results


def test_a_message_moved_out_of_its_session_fails_the_session_check_naming_it(
    cli_env: dict[str, str], imported: dict[str, Any]
) -> None:
    instance, url = dg.DagsterInstance.get(), cli_env["DATABASE_URL"]
    chunk = imported["chunks"][0]
    contact = chunk_contact(url, chunk)
    message_id = corrupt_first_row(url, messages, contact, session_id=None)

    assert execute_checks(instance, chunk["key"]).success
    status, metadata = latest(instance, chunk["key"])[SESSIONS]
    assert status == FAILED
    assert metadata["messages_misplaced"] == 1
    assert f"message {message_id}: no session" in metadata["offenders"]


def test_a_second_import_of_the_channel_passes_every_check(
    cli_env: dict[str, str], imported: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The incremental import re-reads seams and repeats rows; every row is still accounted for."""
    code = main(["import", "demo", "--all-chats"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    instance = dg.DagsterInstance.get()
    second = latest_plan(cli_env["DATABASE_URL"])
    assert second["id"] != imported["id"] and second["chunks"]
    for chunk in second["chunks"]:
        results = latest(instance, chunk["key"])
        assert all(status == SUCCEEDED for status, _ in results.values()), (chunk["key"], results)
