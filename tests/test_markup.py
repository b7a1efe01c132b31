"""Vendor text stays literal in the markdown receivers render (bridge/markup.py), and
the Teams and Discord presets use it wherever vendor text meets markdown.

`shown` and `live_markup` model a renderer: a backslash before ASCII punctuation
shows that character and nothing more (CommonMark, Adaptive Cards and Discord
agree), and markup is whatever is left unescaped that could open emphasis, code, a
link, a mention, a heading, a quote or a list. Text is literal when `shown` gives
the vendor's string back and `live_markup` finds nothing.
"""

from __future__ import annotations

import copy
import json
import re
import string
from typing import Any

import pytest
from envelope_schema import validate_envelope
from hypothesis import given
from hypothesis import strategies as st
from third_party import discord_problems, teams_problems

from bridge.examples import build_examples
from bridge.formats import RenderError
from bridge.formats.template import TemplateFormat, preset_source
from bridge.markup import discord_link, escape_discord, escape_markdown, fit_escaped
from bridge.notifications import build_notification

HOSTILE = "*x* [y](http://evil) @everyone <@123> `z`"
EXAMPLES = {n.type: n for n in build_examples()}

_PUNCTUATION = frozenset(string.punctuation)
_LINE_BREAKS = "\r\n\u2028\u2029"
_MARKDOWN_INLINE = "`*_~[]"
_DISCORD_INLINE = "`*_~|[]<"


def _escaped_positions(text: str) -> tuple[set[int], set[int]]:
    """Positions of escaping backslashes, and of the characters they escape."""
    slashes, escaped = set(), set()
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _PUNCTUATION:
            slashes.add(i)
            escaped.add(i + 1)
            i += 2
        else:
            i += 1
    return slashes, escaped


def shown(text: str) -> str:
    """What a markdown renderer displays for `text` (zero-width spaces are invisible)."""
    slashes, _ = _escaped_positions(text)
    return "".join(c for i, c in enumerate(text) if i not in slashes).replace("\u200b", "")


def live_markup(text: str, *, discord: bool) -> list[str]:
    """Unescaped characters and sequences that a renderer would treat as markup."""
    _, escaped = _escaped_positions(text)
    inline = _DISCORD_INLINE if discord else _MARKDOWN_INLINE
    found = [f"{c!r} at {i}" for i, c in enumerate(text) if c in inline and i not in escaped]
    for start in [0] + [i + 1 for i, c in enumerate(text) if c in _LINE_BREAKS]:
        j = start
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] in "-+=>#" and j not in escaped:
            found.append(f"line marker {text[j]!r} at {j}")
        numbered = re.match(r"\d{1,9}[.)]", text[j:])
        if numbered and j + numbered.end() - 1 not in escaped:
            found.append(f"numbered list at {j}")
    if discord:
        found += [f"broadcast {m.group()!r}" for m in re.finditer(r"(?i)@(everyone|here)", text)]
    else:
        found += [
            f"entity at {m.start()}"
            for m in re.finditer(r"&#?[0-9A-Za-z]+;", text)
            if m.start() not in escaped
        ]
        found += [f"card function at {m.start()}" for m in re.finditer(r"\{\{(DATE|TIME)\(", text)]
    return found


# --------------------------------------------------------------------------- the escapes


def test_the_hostile_name_is_literal_in_both_dialects() -> None:
    assert escape_discord(HOSTILE) == r"\*x\* \[y\](http://evil) @" + "\u200b" + (
        r"everyone \<@123> \`z\`"
    )
    assert escape_markdown(HOSTILE) == r"\*x\* \[y\](http://evil) @everyone <@123> \`z\`"
    for escaped, discord in ((escape_discord(HOSTILE), True), (escape_markdown(HOSTILE), False)):
        assert shown(escaped) == HOSTILE
        assert live_markup(escaped, discord=discord) == []


@pytest.mark.parametrize(
    "text",
    ["Gus Evans", "FCW (adas)", "2026-11-24 07:00:10 CET", "5904adbd-5ba0-482f", "K245A0001234"],
)
def test_ordinary_values_are_unchanged(text: str) -> None:
    assert escape_markdown(text) == text
    assert escape_discord(text) == text


@pytest.mark.parametrize(
    ("text", "markdown"),
    [
        ("- a\n+ b\r1. c\n  12) d", "\\- a\n\\+ b\r1\\. c\n  12\\) d"),  # lists, also after CR
        ("# big\n> quote\n===", "\\# big\n\\> quote\n\\==="),
        ("a - b, 3. c", "a - b, 3. c"),  # only where a line starts
        ("&amp; &#60; R&D", "\\&amp; \\&#60; R&D"),
        ("{{DATE(2017-02-14T06:00:00Z, SHORT)}}", "{\u200b{DATE(2017-02-14T06:00:00Z, SHORT)}}"),
        ("back\\slash \\*", "back\\\\slash \\\\\\*"),
    ],
)
def test_markdown_line_markers_entities_and_card_functions(text: str, markdown: str) -> None:
    assert escape_markdown(text) == markdown
    assert shown(markdown) == text
    assert live_markup(markdown, discord=False) == []


@pytest.mark.parametrize(
    "text",
    [
        "-# subtext",
        ">>> quote all",
        "||spoiler|| ~~gone~~ __under__",
        "<#42> <@&7> <:e:3> <t:1700000000:R> </cmd:1>",
        "@Everyone @HERE",
        "### heading",
    ],
)
def test_discord_dialect_is_escaped(text: str) -> None:
    escaped = escape_discord(text)
    assert escaped != text
    assert shown(escaped) == text
    assert live_markup(escaped, discord=True) == []


_TOKENS = st.sampled_from(
    [*"\\`*_~|[]()<>#-+=.)!&;:{}@ \t\r\n\u2028x1", "everyone", "here", "DATE(", "&amp;"]
)
_TEXT = st.one_of(
    st.lists(_TOKENS, max_size=40).map("".join),
    st.text(alphabet=st.characters(exclude_characters="\u200b"), max_size=60),
)


@given(_TEXT)
def test_any_text_shows_literally_and_forms_no_markup(text: str) -> None:
    for escaped, discord in ((escape_discord(text), True), (escape_markdown(text), False)):
        assert shown(escaped) == text
        assert live_markup(escaped, discord=discord) == []


@given(_TEXT, st.integers(min_value=1, max_value=30))
def test_a_cut_never_splits_an_escape(text: str, limit: int) -> None:
    for escape, discord in ((escape_discord, True), (escape_markdown, False)):
        escaped = escape(text)
        cut = fit_escaped(escaped, limit)
        assert len(cut) <= limit
        if cut == escaped:
            continue
        assert cut.endswith("…")
        kept = cut.removesuffix("…")
        assert text.startswith(shown(kept))
        assert live_markup(kept, discord=discord) == []


# --------------------------------------------------------------------------- links


def test_discord_link_escapes_the_label_and_encodes_the_url() -> None:
    url = "https://ok.example/v.mp4?a=(b)&c=<d>\\"
    assert discord_link(url, "Video x](http://evil) [y") == (
        r"[Video x\](http://evil) \[y](https://ok.example/v.mp4?a=%28b%29&c=%3Cd%3E%5C)"
    )
    assert discord_link("https://maps.example/?q=1.5,-2", "Map") == (
        "[Map](https://maps.example/?q=1.5,-2)"
    )


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "https://a.example/x y", "https://a.example/\u202ex", "//a", None, 7],
)
def test_discord_link_refuses_what_is_not_a_plain_web_url(url: Any) -> None:
    assert discord_link(url, "Video") is None


# --------------------------------------------------------------------------- filters


def render(template: str, **data: Any) -> str:
    envelope = {"id": "ntf_1", "type": "bridge.test", "data": data}
    return (
        TemplateFormat(template, target="t", variables={}, content_type="text/plain")
        .render(envelope)
        .body
    )


def test_filters_escape_cut_and_pass_numbers_and_none_through() -> None:
    assert render("{{ data.name | md_escape }}", name="*a*") == r"\*a\*"
    assert render("{{ data.name | discord_escape(4) }}", name="ab*cd") == "ab…"
    assert render("{{ data.n | md_escape | tojson }}", n=7) == "7"
    assert render("{{ data.get('x') | discord_escape | tojson }}") == "null"
    assert render("{{ data.d | discord_escape }}", d={"k": "@here"}) == "{'k': '@\u200bhere'}"
    assert render("{{ data.u | discord_link('Map') }}", u="https://m.example/") == (
        "[Map](https://m.example/)"
    )
    with pytest.raises(RenderError, match="UndefinedError"):
        render("{{ data.missing | md_escape }}")


# --------------------------------------------------------------------------- presets


def hostile(type_: str, **changes: Any) -> dict[str, Any]:
    """The example notification of `type_` with vendor fields replaced, as built."""
    example = EXAMPLES[type_]
    data = copy.deepcopy(example.envelope()["data"]) | changes
    n = build_notification(
        type_, data, base_url=example.envelope()["source"]["base_url"], now=example.created_at
    )
    envelope = n.envelope()
    validate_envelope(envelope)
    return envelope


def preset(name: str, envelope: dict[str, Any]) -> Any:
    fmt = TemplateFormat(preset_source(name), target="t", variables={"tz": "Europe/Amsterdam"})
    return json.loads(fmt.render(envelope).body)


EVENT_CHANGES: dict[str, Any] = {
    "event_type": {"code": 11, "name": "# " + HOSTILE, "category": "adas"},
    "device": {"cid": "5904adbd-5ba0-482f-93f4-e4c01a71dcfd", "serial_number": "> " + HOSTILE},
    "driver": {"id": 5005, "name": HOSTILE},
}


def test_teams_card_shows_vendor_text_literally() -> None:
    body = preset("teams", hostile("event.created", **EVENT_CHANGES))
    assert teams_problems(body) == []
    card = body["attachments"][0]["content"]
    title, _, facts = card["body"]
    values = {f["title"]: f["value"] for f in facts["facts"]}
    expected = {
        "Driver": HOSTILE,
        "Device": "> " + HOSTILE,
        "Event": f"# {HOSTILE} (adas)",
    }
    for name, text in expected.items():
        assert shown(values[name]) == text
        assert live_markup(values[name], discord=False) == []
    assert shown(title["text"]) == f"Minor: # {HOSTILE}"
    assert live_markup(title["text"], discord=False) == []
    assert [a["title"] for a in card["actions"]] == ["Map"]  # no link came from the text


def test_discord_message_shows_vendor_text_literally_and_pings_no_one() -> None:
    body = preset("discord", hostile("event.created", **EVENT_CHANGES))
    assert discord_problems(body) == []
    assert body["allowed_mentions"] == {"parse": []}
    [embed] = body["embeds"]
    values = {f["name"]: f["value"] for f in embed["fields"]}
    assert shown(values["Driver"]) == HOSTILE
    assert shown(values["Device"]) == "> " + HOSTILE
    assert shown(embed["title"]) == f"Minor: # {HOSTILE}"
    assert shown(body["content"]) == f"Minor: # {HOSTILE} · event.created"
    for text in [*values.values(), embed["title"], body["content"]]:
        assert live_markup(text, discord=True) == [], text
    assert embed["description"].startswith("[Map](https://www.google.com/maps?q=")


def test_discord_clip_links_and_fields_stay_literal() -> None:
    videos = [
        {
            "cam_id": "x](http://evil) [y",
            "url": "https://ok.example/v.mp4?a=(b)",
            "expires_at": "2026-11-24T07:02:41Z",
        },
        {"cam_id": "C_I", "url": "https://ok.example/v 2.mp4", "expires_at": None},
    ]
    envelope = hostile(
        "clip.failed",
        file_name="__clip__",
        error={"code": "D_E_TIMEOUT", "description": "||" + HOSTILE + "||"},
        videos=videos,
    )
    body = preset("discord", envelope)
    assert discord_problems(body) == []
    [embed] = body["embeds"]
    assert embed["description"] == (
        r"[Video x\](http://evil) \[y](https://ok.example/v.mp4?a=%28b%29)"
    )  # the URL with a space is left out
    values = {f["name"]: f["value"] for f in embed["fields"]}
    assert shown(values["Error"]) == f"D_E_TIMEOUT ||{HOSTILE}||"
    assert shown(embed["title"]).endswith(": __clip__")
    for text in [*values.values(), embed["title"]]:
        assert live_markup(text, discord=True) == [], text


def test_long_hostile_values_are_cut_within_the_limits_without_a_stray_backslash() -> None:
    name = "*" * 3000
    body = preset("discord", hostile("event.created", driver={"id": 1, "name": name}))
    assert discord_problems(body) == []
    driver = next(f["value"] for f in body["embeds"][0]["fields"] if f["name"] == "Driver")
    assert driver == "\\*" * 511 + "…"  # 1,023 characters: the 512th escape did not fit
    card = preset(
        "teams", hostile("event.created", event_type={"code": 11, "name": name, "category": "adas"})
    )
    title = card["attachments"][0]["content"]["body"][0]["text"]
    assert len(title) <= 200
    assert title.endswith("\\*…")
