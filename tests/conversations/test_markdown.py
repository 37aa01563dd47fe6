from conversations.markdown import markdown_render


def test_markdown_renders_basic_formatting_and_code():
    html = markdown_render(text="# Title\n\n**bold** and `code`\n\n```python\nprint(1)\n```")
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html
    assert '<code class="language-python">print(1)' in html


def test_raw_html_and_scripts_never_pass():
    html = markdown_render(text='<script>alert(1)</script><img src=x onerror=alert(1)> <a href="javascript:x">y</a>')
    # Shown as text (escaped), never as markup.
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
    assert "<a" not in html


def test_links_are_http_https_mailto_only_with_safe_rel():
    html = markdown_render(text="[a](https://example.com) [b](javascript:alert(1)) [c](mailto:x@example.com) [d](data:text/html,hi)")
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">a</a>' in html
    assert '<a href="mailto:x@example.com" rel="noopener noreferrer nofollow">c</a>' in html
    assert "javascript:" not in html.split("</a>")[-1] or 'href="javascript' not in html
    assert 'href="data:' not in html


def test_images_become_plain_links():
    html = markdown_render(text="![a cat](https://example.com/cat.png)")
    assert "<img" not in html
    assert '<a href="https://example.com/cat.png" rel="noopener noreferrer nofollow">a cat</a>' in html


def test_a_code_class_cannot_target_page_styles():
    html = markdown_render(text="```evil onclick\nx\n```")
    assert "onclick" not in html.split(">")[1]
