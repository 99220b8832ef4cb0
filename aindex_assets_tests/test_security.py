"""Security: nothing read back is unpickled, presigned URLs expire, names never become paths.

Credentials in logs, event logs, metadata and catalog rows are checked on a real run in
test_stack_faults.py; settings' redaction in test_settings.py; TorchScript pins in
test_extractors.py.
"""

from __future__ import annotations

import io
import pickle
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.extractors import ExtractorError, load_extractor
from aindex_assets.services.index import load_batch_descriptors
from aindex_assets.settings import Settings, redact_extractor_spec
from aindex_assets.storage.arrays import decode_descriptors, encode_descriptors
from aindex_assets.storage.inbox import upload_key
from aindex_assets.storage.keys import INBOX_PREFIX, embeddings_key, validate_key
from aindex_assets.storage.objectstore import LocalObjectStore

EXTRACTOR = "e" * 64


class OpensAFile:
    """Unpickling this creates a file: proof that a payload's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def pickled_npz(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array([OpensAFile(marker)], dtype=object), vectors=np.zeros((1, 4)))
    return buffer.getvalue()


def test_pickled_descriptor_payloads_are_refused_from_the_store(object_store, tmp_path):
    marker = tmp_path / "pwned"
    key = embeddings_key(EXTRACTOR, "b1")
    for payload in (pickled_npz(marker), pickle.dumps(OpensAFile(marker))):
        object_store.put_bytes(key, payload)
        with pytest.raises(ValueError, match="pickle"):
            load_batch_descriptors(object_store, EXTRACTOR, "b1")
    assert not marker.exists(), "the payload's code must never run"
    object_store.put_bytes(key, encode_descriptors(np.array([7]), np.ones((1, 4))))
    ids, vectors = decode_descriptors(object_store.get_bytes(key))
    assert ids.tolist() == [7] and vectors.dtype == np.float32


def test_a_pickle_is_not_a_faiss_index(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(faiss_index.IndexSpecError, match="not a serialized FAISS index"):
        faiss_index.deserialize_index(pickle.dumps(OpensAFile(marker)))
    assert not marker.exists()


def test_weights_that_are_not_plain_tensors_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "resnet18.pth"
    torch.save({"fc.weight": OpensAFile(marker)}, weights)
    with pytest.raises(ExtractorError, match="refused"):
        load_extractor(f"torchvision:resnet18:{weights}", device="cpu")
    assert not marker.exists()


@pytest.mark.services
def test_presigned_url_stops_working_when_it_expires(s3_store):
    s3_store.put_bytes("p/short.txt", b"hello")
    url = s3_store.presigned_url("p/short.txt", timedelta(seconds=2))
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"hello"
    time.sleep(3.5)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url)
    assert caught.value.code == 403


HOSTILE_NAMES = [
    "../../etc/passwd",
    "/etc/shadow",
    "..",
    "a/../../b.png",
    "C:\\Windows\\evil.png",
    "..\\..\\evil.png",
    ".aindex-meta",
    "\x00.png",
    "photo with spaces and ünïcødé.jpg",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_upload_keys_from_hostile_names_stay_inside_the_inbox(name, tmp_path):
    key = upload_key(name, prefix=INBOX_PREFIX)
    assert validate_key(key) == key and key.startswith(INBOX_PREFIX)
    assert key.count("/") == 2, "a name adds exactly one path segment"
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes(key, b"x")
    [written] = [
        p for p in (tmp_path / "objects").rglob("*") if p.is_file() and ".aindex" not in str(p)
    ]
    assert written.resolve().is_relative_to((tmp_path / "objects" / "inbox").resolve())
    assert list(tmp_path.iterdir()) == [tmp_path / "objects"]


def test_a_token_in_a_model_url_is_never_shown_or_stored():
    spec = f"torchscript:https://user:model-token-x@models.example.org/sscd.pt#sha256={'a' * 64}"
    shown = redact_extractor_spec(spec)
    assert "model-token-x" not in shown
    assert shown == f"torchscript:https://user:***@models.example.org/sscd.pt#sha256={'a' * 64}"
    assert redact_extractor_spec("torchvision:resnet50:/w.pth") == "torchvision:resnet50:/w.pth"
    signed = "torchscript:https://b.example.org/m.pt?X-Amz-Signature=sig-x&X-Amz-Expires=60"
    assert redact_extractor_spec(signed) == (
        "torchscript:https://b.example.org/m.pt?X-Amz-Signature=***&X-Amz-Expires=***"
    )
    settings = Settings.from_env({"AINDEX_EXTRACTOR": spec}, dotenv=None)
    assert "model-token-x" not in repr(settings)
