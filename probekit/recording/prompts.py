"""Prompt templates and read windows for text models (decoder LMs above all).

``extract(model, data, out, template="Review: {text}\\nSentiment:")`` feeds the model each text
inside the template; ``chat_template=True`` then wraps that (or the bare text) as the user turn of
the tokenizer's chat template with the generation prompt (``add_generation_prompt=True``),
tokenized without the tokenizer's own special tokens, as ``apply_chat_template`` does. Where the
poolings read (``read``):

* ``"prompt"`` (default): every token of the templated prompt (the attention mask).
* ``"text"``: only the tokens that overlap the characters of ``{text}`` inside the prompt,
  mapped through the fast tokenizer's ``offset_mapping``; special tokens (empty offsets) never.

``mean`` averages the window, ``last`` reads its last token and ``last-N`` the token ``N`` places
before that (the window's first token when it is shorter); ``cls`` is the first token and takes
no window. The window is a ``(B, T)`` mask in the padded batch, so left and right padding read
the same tokens, and padding is never read.

Truncation keeps the template: a prompt longer than the model's token limit has the end of its
text cut (whole tokens, until the prompt fits), never the template's tail (so ``last`` is always
the prompt's last token). A template that leaves no room for any text is a ConfigError; a text
left with no token to read (an empty text, with ``read="text"``) is a DataError, both before any
forward pass. The manifest counts the cut texts (``info.truncated_samples``).

The template, the chat template's sha256 and ``read`` are the manifest's ``prompt`` entry, part
of the cache's fingerprint; a cache recorded without any of them has no such entry.

This module imports no torch at import time: :class:`~probekit.runs.RunConfig` checks templates
with :func:`check_template`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError
from .options import READS

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from ..models.loading import LoadedModel

__all__ = ["READ_KEY", "PromptPlan", "check_template", "parse_template", "plan_prompts"]

READ_KEY = "probekit_read_window"
"""The key under which a prompt batch carries its ``(B, T)`` read window (popped before the
forward pass)."""

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}

Encoded = tuple[str, int, int, list[tuple[int, int]]]
"""A prompt, its text's first and end character, its token offsets ``[(first, end)]``."""
Rendered = tuple[str, int, int, bool, list[tuple[int, int]]]
"""A fitted prompt, its text's characters, whether the text was cut, its token offsets."""
Render = Callable[..., Rendered]


def parse_template(value: Any) -> str:
    """A template as typed on a command line: ``\\n``, ``\\t`` and ``\\\\`` become a newline, a
    tab and a backslash (any other backslash is kept), then :func:`check_template`."""
    text, out, i = str(value), [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    template = "".join(out)
    check_template(template)
    return template


def check_template(template: str) -> tuple[str, str]:
    """Split a template at its one ``{text}``: ``"Q: {text} A:"`` -> ``("Q: ", " A:")``.

    Raises:
        ConfigError: no ``{text}``, more than one, or any other brace.
    """
    if not isinstance(template, str):
        raise ConfigError(f"template must be a string holding {{text}}, got {template!r}")
    parts = template.split("{text}")
    if len(parts) != 2:
        many = "more than one {text}" if len(parts) > 2 else "no {text}"
        raise ConfigError(f"template {template!r} has {many}; it needs exactly one")
    if any(c in part for part in parts for c in "{}"):
        raise ConfigError(
            f"template {template!r} has a brace besides {{text}}; {{text}} is its only field"
        )
    return parts[0], parts[1]


def check_prompt_options(
    template: str | None, chat_template: bool, read: str, unit: str, poolings: Sequence[str]
) -> bool:
    """Check the prompt options without a model; returns whether any is active.

    Raises:
        ConfigError: a bad template or ``read``, prompts with a unit cache, or ``cls`` with
            ``read="text"`` (``cls`` is the first token, not a window).
    """
    if read not in READS:
        raise ConfigError(f"read must be one of {', '.join(READS)}, got {read!r}")
    if template is not None:
        check_template(template)
    active = template is not None or bool(chat_template) or read != "prompt"
    if active and unit != "sample":
        raise ConfigError(f"template, chat_template and read apply to unit=sample, not unit={unit}")
    if read == "text" and "cls" in poolings:
        raise ConfigError(
            "pooling cls reads the first token, not a window; with read=text "
            "use mean, last or last-N"
        )
    return active


@dataclass(frozen=True)
class PromptPlan:
    """Every text's prompt and the characters of its ``{text}`` in it, known before any forward.

    Attributes:
        template: the template, or ``None`` (the text alone).
        chat_template: the tokenizer's chat template when it wraps the prompt, else ``None``.
        read: ``"prompt"`` or ``"text"``: which tokens the poolings read.
        entries: ``text -> (prompt, first character of the text, end)`` for every text seen.
        cut: the texts whose end was cut to fit the model's token limit.
        window_sizes: ``(N,)`` tokens in each planned text's read window, in order.
        render: ``render(text) -> (prompt, start, end, cut, offsets)``: a text's prompt fitted
            to the limit, its text's characters, whether it was cut, the prompt's token offsets
            ``[(first, end)]`` (for texts not planned).
    """

    template: str | None
    chat_template: str | None
    read: str
    entries: dict[str, tuple[str, int, int]]
    cut: frozenset[str]
    window_sizes: list[int]
    render: Render = field(repr=False)

    @property
    def identity(self) -> dict[str, Any]:
        """The manifest's ``prompt`` entry (fingerprinted)."""
        chat = self.chat_template
        return {
            "template": self.template,
            "chat_template": None if chat is None else hashlib.sha256(chat.encode()).hexdigest(),
            "read": self.read,
        }

    def count_cut(self, texts: Sequence[str] | None) -> int:
        """How many of ``texts`` had their end cut to fit."""
        return 0 if texts is None else sum(str(t) in self.cut for t in texts)

    def short_windows(self, n: int) -> int:
        """Planned texts whose read window has at most ``n`` tokens (``last-n`` reads its first)."""
        return sum(size <= n for size in self.window_sizes)

    def entry(self, text: str) -> tuple[str, int, int]:
        """``(prompt, start, end)`` of ``text`` (planned, or rendered now)."""
        found = self.entries.get(text)
        if found is None:
            prompt, start, end, _, _ = self.render(text)
            found = (prompt, start, end)
        return found

    def wrap(self, model: LoadedModel) -> LoadedModel:
        """``model`` whose ``preprocess(texts)`` tokenizes their prompts and adds the read
        window ``(B, T)`` int64 under :data:`READ_KEY` (the same ``nn.Module``, shared)."""
        tokenizer, limit, inputs = model.tokenizer, model.max_length, model.inputs
        assert inputs is not None  # a text model (checked by plan_prompts)
        special = self.chat_template is None

        def preprocess(items: Sequence[Any]) -> dict[str, Tensor]:
            import torch

            found = [self.entry(str(t)) for t in items]
            enc = tokenizer(
                [f[0] for f in found],
                padding=True,
                truncation=limit is not None,
                max_length=limit,
                add_special_tokens=special,
                return_offsets_mapping=self.read == "text",
                return_tensors="pt",
            )
            window = enc["attention_mask"].bool()  # (B, T)
            if self.read == "text":
                offsets = enc["offset_mapping"]  # (B, T, 2) characters of each token
                lo, hi = offsets[..., 0], offsets[..., 1]
                start = torch.tensor([f[1] for f in found]).unsqueeze(1)  # (B, 1)
                end = torch.tensor([f[2] for f in found]).unsqueeze(1)
                window &= (hi > lo) & (lo < end) & (hi > start)
            out = inputs(enc)
            out[READ_KEY] = window.long()
            return out

        return replace(model, preprocess=preprocess)


def _chat_renderer(
    tokenizer: Any, spec: str
) -> tuple[str, Callable[[str], tuple[str, int, int, int]]]:
    """The chat template and ``chat(content) -> (rendered, where content's first character
    would be, the first and the end character of what the prompt shows of it)`` (templates often
    trim the content)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default")
    if not isinstance(template, str) or not template:
        raise ConfigError(
            f"chat_template: the tokenizer of {spec} has no chat template; "
            "drop --chat-template or use a --template"
        )

    def apply(content: str) -> str:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    probe = "\x00probekit\x00"
    head = max(apply(probe).find(probe), 0)  # the constant part before the user's content

    def chat(content: str) -> tuple[str, int, int, int]:
        rendered = apply(content)
        at = rendered.find(content, head) if content else -1
        if at >= 0:
            return rendered, at, at, at + len(content)
        shown = content.strip()
        found = rendered.find(shown, head) if shown else head
        if found < 0:
            raise DataError(
                f"the chat template of {spec} changes the text {content[:40]!r}: "
                "its characters cannot be found in the prompt"
            )
        return rendered, found - (len(content) - len(content.lstrip())), found, found + len(shown)

    return template, chat


def _make_render(
    model: LoadedModel,
    template: str | None,
    chat: Callable[[str], tuple[str, int, int, int]] | None,
) -> tuple[Callable[[str], tuple[str, int, int]], Render]:
    """``plain(text) -> (prompt, start, end)``: the prompt of ``text`` and where the text's
    characters are in it; ``render(text, first=None) -> (prompt, start, end, cut, offsets)``:
    the same with the text's end cut until the prompt fits the model's limit, whether it was cut,
    and the prompt's token offsets (``first``: the uncut prompt's ``(prompt, start, end,
    offsets)``, when they are known already)."""
    pre, post = check_template(template) if template is not None else ("", "")
    tokenizer, limit = model.tokenizer, model.max_length

    def plain(text: str) -> tuple[str, int, int]:
        content = pre + text + post
        a, b = len(pre), len(pre) + len(text)
        if chat is None:
            return content, a, b
        rendered, at, first, end = chat(content)
        lo, hi = max(at + a, first), min(at + b, end)
        return rendered, lo, max(hi, lo)

    def render(text: str, first: Encoded | None = None) -> Rendered:
        keep = len(text)
        while True:
            if first is not None and keep == len(text):
                prompt, a, b, offsets = first
            else:
                prompt, a, b = plain(text[:keep])
                offsets = _offsets(tokenizer, [prompt], chat is None)[0]
            excess = len(offsets) - limit if limit is not None else 0
            if excess <= 0:
                return prompt, a, b, keep < len(text), offsets
            if keep == 0:
                raise ConfigError(
                    f"the prompt template leaves no room for a text within {model.spec}'s "
                    f"limit of {limit} tokens"
                )
            starts = [s for s, e in offsets if e > s and s < b and e > a]  # the text's tokens
            first_cut = starts[max(len(starts) - excess, 0)] if starts else a
            keep = min(max(first_cut - a, 0), keep - 1)

    return plain, render


def _offsets(tokenizer: Any, prompts: list[str], special: bool) -> list[list[tuple[int, int]]]:
    """Each prompt's token offsets ``[(first, end)]``, untruncated."""
    enc = tokenizer(
        prompts,
        add_special_tokens=special,
        return_offsets_mapping=True,
        truncation=False,
        verbose=False,
    )
    return [[(int(s), int(e)) for s, e in row] for row in enc["offset_mapping"]]


def _window_size(offsets: Sequence[tuple[int, int]], a: int, b: int, read: str) -> int:
    if read == "prompt":
        return len(offsets)
    return sum(1 for s, e in offsets if e > s and s < b and e > a)


def plan_prompts(
    model: LoadedModel,
    texts: Sequence[str],
    template: str | None,
    chat_template: bool,
    read: str,
) -> PromptPlan:
    """Render every text's prompt, fit it to the model's limit and measure its read window.

    Raises:
        ConfigError: not a text model with a fast tokenizer, a bad template, no chat template,
            or a template that leaves no room for a text.
        DataError: a text with no token to read (``read="text"``).
    """
    tokenizer = model.tokenizer
    if model.kind != "text" or tokenizer is None or model.inputs is None:
        raise ConfigError(
            f"template, chat_template and read apply to text models, not {model.spec}"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"template, chat_template and read need a fast tokenizer (offset_mapping); "
            f"{model.spec} has {type(tokenizer).__name__}"
        )
    chat_text, chat = _chat_renderer(tokenizer, model.spec) if chat_template else (None, None)
    plain, render = _make_render(model, template, chat)
    render("")  # the template alone must leave room for a text: ConfigError before the data
    entries: dict[str, tuple[str, int, int]] = {}
    sizes: dict[str, int] = {}
    cut: set[str] = set()
    first_at: dict[str, int] = {}
    for i, t in enumerate(texts):
        first_at.setdefault(str(t), i)
    unique = list(first_at)
    for s in range(0, len(unique), 1024):  # one tokenizer call per chunk; long prompts again
        chunk = unique[s : s + 1024]
        plains = [plain(text) for text in chunk]
        batch = _offsets(tokenizer, [p[0] for p in plains], chat is None)
        for text, (prompt, a, b), offs in zip(chunk, plains, batch, strict=True):
            prompt, a, b, was_cut, offsets = render(text, (prompt, a, b, offs))
            entries[text] = (prompt, a, b)
            sizes[text] = _window_size(offsets, a, b, read)
            if sizes[text] == 0:
                raise DataError(
                    f"sample {first_at[text]}: text {text[:40]!r} gives no token to read "
                    f"with read={read}"
                )
            if was_cut:
                cut.add(text)
    window_sizes = [sizes[str(t)] for t in texts]
    if cut:
        warnings.warn(
            f"{model.spec}: {len(cut)} text(s) too long for the prompt within the model's limit "
            f"of {model.max_length} tokens had their end cut (the template is kept whole)",
            stacklevel=3,
        )
    return PromptPlan(template, chat_text, read, entries, frozenset(cut), window_sizes, render)
