"""Colour arithmetic for browser tests, as JavaScript to paste into page.evaluate()."""

# WCAG 2.1's relative luminance and contrast ratio of CSS colours, with alpha laid over what is
# under it: pasted at the start of a function given to page.evaluate().
COLOUR_MATH = """
  const parse = (c) => {
    const m = /^rgba?\\(([^)]*)\\)$/.exec(c);
    if (!m) throw new Error("unreadable colour " + c);
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat([1]);
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => v / 255).map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => {
    const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
"""
