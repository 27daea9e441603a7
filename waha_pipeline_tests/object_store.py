"""An S3-compatible server on loopback (moto's server mode, real HTTP) and the standard AWS environment that points
s3fs at it, for the stage store's object-store tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import s3fs

# Dummy credentials: the server accepts any; real ones would come from the same variables.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "stage-test-key", "AWS_SECRET_ACCESS_KEY": "stage-test-secret-value"}


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this server as S3 (what a deployment sets for its own)."""
        return {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def url(self, prefix: str = "stages") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def filesystem(self) -> s3fs.S3FileSystem:
        """A client of its own (not fsspec's shared instance), to look at or delete objects behind the store."""
        import s3fs

        return s3fs.S3FileSystem(key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                 endpoint_url=self.endpoint, skip_instance_cache=True, use_listings_cache=False)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix` of the bucket."""
        return sorted(k.split("/", 1)[1] for k in self.filesystem().find(f"{self.bucket}/{prefix}"))


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A fresh bucket, with this process's AWS environment pointing at the server."""
    import s3fs

    store = S3(s3_endpoint, f"stages-{secrets.token_hex(4)}")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made under another environment would be reused
    store.filesystem().mkdir(store.bucket)
    yield store
    s3fs.S3FileSystem.clear_instance_cache()
