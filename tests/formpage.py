"""What a browser would send from a page's form, for tests that save a page as it was shown."""

from html.parser import HTMLParser


class _FormFields(HTMLParser):
    """The values of the form with id `form_id`: text and hidden inputs, ticked checkboxes,
    the selected options of each select, textareas. Password inputs are left empty."""

    def __init__(self, form_id: str):
        super().__init__()
        self.form_id, self.inside = form_id, False
        self.values: dict[str, str | list[str]] = {}
        self._select: str | None = None
        self._multiple = False
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside:
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = a.get("type", "text")
            if kind in ("submit", "button", "password") or (kind in ("checkbox", "radio") and "checked" not in a):
                return
            self.values[name] = a.get("value", "on" if kind == "checkbox" else "") or ""
        elif tag == "select" and name:
            self._select, self._multiple = name, "multiple" in a
            if self._multiple:
                self.values[name] = []
        elif tag == "option" and self._select and "selected" in a:
            if self._multiple:
                self.values[self._select].append(a.get("value"))
            else:
                self.values[self._select] = a.get("value")
        elif tag == "textarea" and name:
            self._textarea = name
            self.values[name] = ""

    def handle_data(self, data):
        if self._textarea:
            self.values[self._textarea] += data

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "form":
            self.inside = False


def page_form(client, url: str, form_id: str) -> dict:
    """GET `url` with `client` and return what its form `form_id` would post, unchanged."""
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    parser = _FormFields(form_id)
    parser.feed(response.content.decode())
    return parser.values
