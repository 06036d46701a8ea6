"""The read side of a coordinator for tools (gateway export, generate): JSON views, merged
weights, and a model rebuilt from the base's config and tokenizer files plus those weights,
so a client needs no local copy of the base model.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from ..exchange.http import HttpTransport, TransportError, error_of
from .link import VERSION, WorkerError


class CoordinatorClient:
    def __init__(self, url: str, token: str | None = None, retry_for: float = 30.0) -> None:
        self.transport = HttpTransport(url, "client", token, retry_for)
        self._files: dict[str, str] | None = None

    def get(self, path: str, **kw: Any) -> Any:
        try:
            r = self.transport.request("GET", path, **kw)
        except TransportError as exc:
            raise WorkerError(str(exc)) from None
        if r.status_code != 200:
            raise WorkerError(f"GET {path}: {error_of(r)}")
        return r

    def json(self, path: str) -> Any:
        return self.get(path).json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.transport.request("POST", path, json=body)
        if r.status_code != 200:
            raise WorkerError(f"POST {path}: {error_of(r)}")
        return r.json()

    def weights(self, which: str) -> tuple[dict[str, torch.Tensor], int]:
        """`gateway` or an expert's name: its merged weights and version."""
        from safetensors.torch import load

        path = "/v1/gateway/weights" if which == "gateway" else f"/v1/experts/{which}/weights"
        r = self.get(path)
        return load(r.content), int(r.headers[VERSION])

    def files(self) -> dict[str, str]:
        if self._files is None:
            self._files = self.json("/v1/base/files")
        return self._files

    def model(self, which: str) -> tuple[torch.nn.Module, Any, int]:
        """(model, tokenizer, version) of `gateway` or an expert, built locally."""
        from transformers import AutoConfig, AutoTokenizer

        from ..tasks.lm.pretrained import write_files
        from ..tasks.lm.weights import model_from_weights

        tensors, version = self.weights(which)
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_files(self.files(), tmp)
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model_from_weights(config, tensors), tok, version

    def close(self) -> None:
        self.transport.close()
