"""Assistant Markdown to safe HTML: markdown-it-py with raw HTML off, then nh3 as the net.

Model output is untrusted (a prompt can make it print anything), so both layers hold: the
renderer never passes HTML through, and the sanitizer keeps only a small set of tags."""

from __future__ import annotations

import html

import nh3
from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table").enable(
    "strikethrough"
)


def _image_as_link(self, tokens, idx, options, env):
    # No images: a remote image would leak the reader's IP to whoever the model names. Show the
    # alt text, as a link when the URL passes the renderer's own link validation.
    token = tokens[idx]
    alt = html.escape(self.renderInlineAsText(token.children or [], options, env))
    src = token.attrGet("src") or ""
    if src and _md.validateLink(src):
        return f'<a href="{html.escape(src, quote=True)}">{alt or html.escape(src)}</a>'
    return alt


_md.add_render_rule("image", _image_as_link)

ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}
ALLOWED_ATTRIBUTES = {"a": {"href"}, "code": {"class"}, "ol": {"start"}}


def _keep_class(tag: str, attr: str, value: str) -> str | None:
    if tag == "code" and attr == "class":
        # Only "language-xyz" from fenced code; nothing that could target the page's own CSS.
        return value if value.startswith("language-") and value[9:].replace("-", "").isalnum() else None
    return value


def markdown_render(*, text: str) -> str:
    rendered = _md.render(text or "")
    return nh3.clean(
        rendered,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=_keep_class,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
