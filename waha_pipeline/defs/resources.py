"""Resources keyed by the system they reach. Secrets come from the environment at run time and never
appear in run config, metadata or the UI."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from waha_pipeline.crm.migrate import upgrade
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.importer.stage_store import StageStore
from waha_pipeline.importer.workers import RunnerSpec
from waha_pipeline.process_tuning import tune_import_process
from waha_pipeline.settings import MB, Settings, chunk_workers
from waha_pipeline.waha.client import WahaClient


class WahaResource(dg.ConfigurableResource):
    """A WAHA server. `base_url` defaults to WAHA_BASE_URL; the key is read from WAHA_API_KEY only."""

    base_url: str | None = None
    concurrency: int | None = None
    page_size: int | None = None
    # Bounds one chunk's WAHA work whatever WAHA does (hangs, slow pages, retries): the chunk then fails alone.
    # Inside run_tags.CHUNK_BUDGET_SECONDS, which sizes a run's dagster/max_runtime.
    chunk_deadline_seconds: float = 150.0

    def settings(self) -> Settings:
        return Settings.from_env()

    def resolved_page_size(self) -> int:
        return self.page_size or self.settings().waha_page_size

    def resolved_concurrency(self) -> int:
        return self.concurrency or self.settings().waha_concurrency

    def client(self) -> WahaClient:
        """A new client; create and use it inside the event loop that will run its requests."""
        base_url, api_key = self._endpoint()
        return WahaClient(base_url, api_key=api_key, concurrency=self.resolved_concurrency(),
                          max_response_bytes=self.settings().waha_max_response_bytes)

    def server_url(self) -> str:
        """The base URL of this WAHA server (with whatever credentials it carries: not for display)."""
        return self._endpoint()[0]

    def _endpoint(self) -> tuple[str, str | None]:
        settings = self.settings()
        return self.base_url or settings.require_waha(), settings.waha_api_key

    def worker_count(self, crm: CrmResource, chunks: int) -> int:
        """IMPORT_WORKERS (PostgreSQL CRM only), at most one per chunk and per allowed concurrent WAHA request."""
        return min(chunk_workers(self.settings().import_workers, crm.url()), chunks, self.resolved_concurrency())

    def runner_spec(self, crm: CrmResource, workers: int = 1) -> RunnerSpec:
        """What each of `workers` chunk worker processes needs; they split this server's concurrency."""
        base_url, api_key = self._endpoint()
        settings = self.settings()
        return RunnerSpec(
            database_url=crm.url(),
            crm_commit_timeouts=settings.crm_commit_timeouts,
            stage_root=crm.stages().url,
            waha_base_url=base_url,
            waha_api_key=api_key,
            waha_concurrency=self.resolved_concurrency() // workers,
            waha_max_response_bytes=settings.waha_max_response_bytes,
            page_size=self.resolved_page_size(),
            fetch_deadline_seconds=self.chunk_deadline_seconds,
            # Alone, a runner overlaps fetching with its own work two chunks ahead; with several workers the others'
            # work overlaps too, and one ahead is faster and leaner (bench scale, 2 workers: 149 s / 611 MB tree PSS
            # with 1 ahead, 162 s / 659 MB with 2, 158 s / 633 MB with none).
            prefetch=2 if workers == 1 else 1,
            max_chunk_bytes=int(settings.chunk_max_mb * MB),
        )


class CrmResource(dg.ConfigurableResource):
    """The CRM database (DATABASE_URL) and the per-chunk stage files (IMPORT_STAGE_URL, else next to the Dagster
    instance). `stage_url` takes a directory or an fsspec URL; `stage_dir` a directory."""

    database_url: str | None = None
    stage_dir: str | None = None
    stage_url: str | None = None

    _store: CrmStore | None = PrivateAttr(default=None)

    def url(self) -> str:
        return self.database_url or Settings.from_env().database_url

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if context.run is not None:  # a run process's entry (process_tuning.py); not a sensor's evaluation
            tune_import_process()
        url = self.url()
        upgrade(url)  # a no-op at head; keeps a fresh CRM usable from the UI and sensors alike
        self._store = CrmStore.from_url(url, commit_timeouts=Settings.from_env().crm_commit_timeouts)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()

    @property
    def store(self) -> CrmStore:
        if self._store is None:
            raise RuntimeError("CrmResource used outside of a Dagster execution")
        return self._store

    def stages(self) -> StageStore:
        return StageStore(self.stage_url or self.stage_dir or Settings.from_env().stage_store_url)
