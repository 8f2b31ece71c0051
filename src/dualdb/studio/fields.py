"""Form fields for the studio's create/edit pages, validated exactly like the DAL.

Each field turns the submitted text into the value the DAL takes (a UUID string, a list of
them, a JSON document, an int or ``None``) and checks it with the same
:mod:`dualdb.validation` function the repositories run, so a bad UUID or invalid JSON is a
form error next to the field — before anything reaches the database.  The repositories then
validate again when the studio calls them: the form is the friendly message, the DAL is the
rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from wtforms import Field, Form, IntegerField, SelectField, StringField, TextAreaField
from wtforms.validators import StopValidation

from dualdb.errors import InvalidInput

#: A dualdb.validation function: ``check(field_name, value)`` raising InvalidInput.
Check = Callable[[str, Any], object]

_SPLIT_RE = re.compile(r"[\s,]+")


def message(exc: InvalidInput, field: str) -> str:
    """The message of ``exc``, without its ``field:`` prefix when that names the form field
    itself (the form shows it next to the field); ``depends_on[2]: …`` keeps its index."""
    text = str(exc)
    prefix = f"{field}: "
    return text[len(prefix) :] if exc.field == field and text.startswith(prefix) else text


class DalCheck:
    """A WTForms validator running a :mod:`dualdb.validation` function on the field's data.

    ``None`` (a blank optional field) is accepted without a check when ``optional`` is set.
    Skipped when the text could not even be parsed (that error is already shown).
    """

    def __init__(
        self, check: Check, *, optional: bool = False, required: bool | None = None
    ) -> None:
        self.check = check
        self.optional = optional
        # WTForms marks the <input> ``required`` (and the label with a star) from this flag;
        # a field that may be left empty (optional, or an empty list) must not carry it.
        self.field_flags = (
            {"required": True} if (required is None and not optional) or required else {}
        )

    def __call__(self, form: Form, field: Field) -> None:
        if field.process_errors:
            raise StopValidation()
        if field.data is None and self.optional:
            return
        try:
            self.check(field.name, field.data)
        except InvalidInput as exc:
            raise StopValidation(message(exc, field.name)) from None


def _styled(kwargs: dict[str, Any], css: str = "form-control") -> dict[str, Any]:
    """``kwargs`` with the Tabler/Bootstrap class sqladmin's own fields get."""
    kwargs.setdefault("render_kw", {}).setdefault("class", css)
    return kwargs


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


class TextField(StringField):
    """A one-line text input; with ``blank_is_null`` an empty input means SQL NULL."""

    def __init__(self, *args: Any, blank_is_null: bool = False, **kwargs: Any) -> None:
        if blank_is_null:
            kwargs.setdefault("filters", []).append(_blank_to_none)
        super().__init__(*args, **_styled(kwargs))


class UUIDField(StringField):
    """A UUID typed as text (``6f1c…``); blank is ``None`` (e.g. "make a new id")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("filters", []).append(_strip_or_none)
        kwargs.setdefault("render_kw", {}).setdefault(
            "placeholder", "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
        )
        super().__init__(*args, **_styled(kwargs, "form-control font-monospace"))

    def _value(self) -> str:
        return "" if self.data is None else str(self.data)


def _strip_or_none(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip() or None
    return value


class UUIDListField(TextAreaField):
    """A ``uuid[]`` value: UUIDs separated by commas, spaces or new lines (or a JSON array).

    Shown one UUID per line.  The parsed value is a list of strings; the DAL's
    :func:`~dualdb.validation.uuid_list` check reports the first bad item by position.
    """

    #: Not text once parsed (the stubs type a text area's data as ``str``).
    data: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("render_kw", {}).setdefault("rows", 3)
        kwargs.setdefault("description", "One UUID per line (commas or a JSON array also work).")
        super().__init__(*args, **_styled(kwargs, "form-control font-monospace"))

    def process_formdata(self, valuelist: Sequence[Any]) -> None:
        if not valuelist:
            return
        text = str(valuelist[0]).strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                self.data = None
                raise ValueError(f"not a valid JSON array: {exc.msg}") from None
            if not isinstance(parsed, list):  # pragma: no cover - "[" always parses to a list
                raise ValueError("must be a list of UUIDs")
            self.data = parsed
        else:
            self.data = [item for item in _SPLIT_RE.split(text) if item]

    def _value(self) -> str:
        if self.raw_data:
            return str(self.raw_data[0])
        return "\n".join(str(u) for u in (self.data or []))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JSONField(TextAreaField):
    """A ``jsonb`` value edited as JSON text, shown pretty-printed.

    Text that does not parse is a form error with the parser's line and column; NaN and
    Infinity (which Python's parser would accept) are refused, as JSON and jsonb do.
    """

    #: Not text once parsed (the stubs type a text area's data as ``str``).
    data: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        render_kw = kwargs.setdefault("render_kw", {})
        render_kw.setdefault("rows", 8)
        render_kw.setdefault("class", "form-control font-monospace")
        render_kw.setdefault("spellcheck", "false")
        super().__init__(*args, **kwargs)

    def process_formdata(self, valuelist: Sequence[Any]) -> None:
        if not valuelist:
            return
        text = str(valuelist[0])
        try:
            self.data = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            self.data = None
            raise ValueError(
                f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        except ValueError as exc:
            self.data = None
            raise ValueError(f"invalid JSON: {exc}") from None

    def _value(self) -> str:
        if self.raw_data:
            return str(self.raw_data[0])
        if self.data is None:
            return ""
        return json.dumps(self.data, indent=2, ensure_ascii=False)


class OptionalIntegerField(IntegerField):
    """An integer input where blank means ``None`` (the DAL picks the value)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_styled(kwargs))

    def process_formdata(self, valuelist: Sequence[Any]) -> None:
        if not valuelist or not str(valuelist[0]).strip():
            self.data = None
            return
        try:
            self.data = int(str(valuelist[0]).strip())
        except ValueError:
            self.data = None
            raise ValueError("must be a whole number") from None


class ChoiceField(SelectField):
    """A drop-down of fixed text choices (e.g. a new task's initial status)."""

    def __init__(self, label: str, *, choices: Sequence[str], **kwargs: Any) -> None:
        super().__init__(label, choices=[(c, c) for c in choices], **_styled(kwargs, "form-select"))
