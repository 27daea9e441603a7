"""Pins the stage files: atomic round trip, per-plan isolation, pruning of a channel's older plans only; the same on
a local directory and on S3 (moto's server over real HTTP); the store chosen by IMPORT_STAGE_URL, shown redacted."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from waha_pipeline.defs.resources import CrmResource
from waha_pipeline.errors import ConfigError
from waha_pipeline.importer.stage_store import StageStore
from waha_pipeline.settings import Settings
from waha_pipeline_tests.object_store import S3, s3, s3_endpoint  # noqa: F401 - fixtures

FRAME = pd.DataFrame({"chat_id": pd.array(["1@c.us", None], dtype="string"), "n": [1, 2]})


def exercise(store: StageStore) -> None:
    store.write("plan-a", "acme.c0000", "fetched", FRAME)
    store.write("plan-a", "acme.c0000", "reads", FRAME.head(0))
    store.write("plan-b", "acme.c0000", "fetched", FRAME.head(1))
    store.write("plan-x", "other.c0000", "fetched", FRAME)

    pd.testing.assert_frame_equal(store.read("plan-a", "acme.c0000", "fetched"), FRAME)
    assert len(store.read("plan-a", "acme.c0000", "reads")) == 0
    assert len(store.read("plan-b", "acme.c0000", "fetched")) == 1
    assert store.read("plan-a", "acme.c0001", "fetched") is None
    assert store.names("plan-a", "acme.c0000") == {"fetched", "reads"}
    assert store.names("plan-a", "acme.c0001") == set()

    store.prune("acme", keep_plan_id="plan-b")
    assert not store.exists("plan-a", "acme.c0000", "fetched")
    assert store.read("plan-a", "acme.c0000", "fetched") is None
    assert store.names("plan-a", "acme.c0000") == set()
    assert store.exists("plan-b", "acme.c0000", "fetched")
    assert store.exists("plan-x", "other.c0000", "fetched"), "another channel's files are not touched"
    store.prune("nobody", keep_plan_id="plan-b")  # a channel without files: nothing to do


def test_round_trip_isolation_and_prune_on_a_local_directory(tmp_path: Path) -> None:
    exercise(StageStore(tmp_path))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["acme/plan-b/acme.c0000/fetched.arrow", "other/plan-x/other.c0000/fetched.arrow"]


def test_round_trip_isolation_and_prune_on_s3(s3: S3) -> None:  # noqa: F811
    exercise(StageStore(s3.url("root")))
    # the local layout, under the prefix; nothing but whole objects (no temporary names)
    assert s3.keys() == ["root/acme/plan-b/acme.c0000/fetched.arrow", "root/other/plan-x/other.c0000/fetched.arrow"]


def test_an_object_deleted_behind_the_store_reads_as_missing(s3: S3) -> None:  # noqa: F811
    store = StageStore(s3.url())
    store.write("plan-a", "acme.c0000", "fetched", FRAME)
    assert store.exists("plan-a", "acme.c0000", "fetched")
    s3.filesystem().rm(f"{s3.bucket}/stages/acme/plan-a/acme.c0000/fetched.arrow")
    assert store.names("plan-a", "acme.c0000") == set()
    assert not store.exists("plan-a", "acme.c0000", "fetched")
    assert store.read("plan-a", "acme.c0000", "fetched") is None


def test_the_stage_store_is_the_one_import_stage_url_names(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IMPORT_STAGE_URL", raising=False)
    assert CrmResource().stages().url == str(tmp_path / "home" / "storage" / "waha_stages")  # the default, as before

    monkeypatch.setenv("IMPORT_STAGE_URL", s3.url("shared"))
    crm = CrmResource()
    assert crm.stages().url == s3.url("shared")
    crm.stages().write("plan-a", "acme.c0000", "fetched", FRAME)
    # another process (another machine) with the same setting reads it
    pd.testing.assert_frame_equal(StageStore(Settings.from_env().stage_store_url).read("plan-a", "acme.c0000", "fetched"),
                                  FRAME)
    assert s3.keys("shared") == ["shared/acme/plan-a/acme.c0000/fetched.arrow"]

    monkeypatch.setenv("IMPORT_STAGE_URL", "relative/stages")
    assert Settings.from_env().stage_store_url == str(Path("relative/stages").absolute())


@pytest.mark.parametrize("url", ["nosuchfs://user:hunter2@host/stages?sig=hunter3",
                                 "sftp://user:hunter2@host/stages?sig=hunter3"])
def test_a_stage_url_no_filesystem_serves_fails_configuration_without_its_secrets(url: str) -> None:
    try:
        Settings.from_env({"IMPORT_STAGE_URL": url})
    except ConfigError as exc:
        message = str(exc)
        assert "IMPORT_STAGE_URL" in message and "user:***@host" in message
        assert "hunter2" not in message and "hunter3" not in message
    else:  # sftp:// is served when paramiko is installed: then the store shows it redacted
        store = StageStore(Settings.from_env({"IMPORT_STAGE_URL": url}).stage_store_url)
        assert "hunter" not in repr(store) and "hunter" not in store.display_url


def test_a_chunk_runner_spec_shows_no_credentials_of_its_urls() -> None:
    """A worker's spec is printed in errors and logs; its stage, CRM and WAHA URLs may carry secrets."""
    from waha_pipeline.importer.workers import RunnerSpec

    spec = RunnerSpec(
        database_url="postgresql://crm:db-secret@db/crm", crm_commit_timeouts=(5.0, 5.0),
        stage_root="s3://bucket/stages?secret=stage-secret", waha_base_url="https://user:waha-secret@waha",
        waha_api_key="key-secret", waha_concurrency=4, waha_max_response_bytes=1, page_size=500,
        fetch_deadline_seconds=60.0, prefetch=1, max_chunk_bytes=1,
    )
    assert not [s for s in ("db-secret", "stage-secret", "waha-secret", "key-secret") if s in repr(spec)]
