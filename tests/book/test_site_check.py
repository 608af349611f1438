"""The browser check must catch what it claims to catch (needs Debian's chromium)."""
from pathlib import Path

import pytest

from mechlib.book.site_check import CHROMIUM, check_site

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium (make browser-deps)")

GOOD = """<html><body><p>accuracy is <span>97%</span></p>
<div class="mechlib-chart" id="c1"><svg><g class="mark-rect"><path d="M0,0h10v10z"></path></g></svg></div></body></html>"""
BAD = """<html><head><script src="https://cdn.example.invalid/lib.js"></script></head><body>
<p>accuracy is {glue:text}`acc`</p><div class="mechlib-chart" id="c2"></div>
<script>console.error("boom")</script></body></html>"""


def test_a_clean_page_passes_and_a_broken_page_fails_on_each_count(tmp_path):
    site = tmp_path / "html"
    (site / "book" / "executed").mkdir(parents=True)
    (site / "book" / "executed" / "good.html").write_text(GOOD)
    (site / "bad.html").write_text(BAD)
    result = check_site(site, tmp_path / "shots")
    assert result["pages"] == 2
    assert "book/executed/good.html" not in result["problems"]
    bad = "\n".join(result["problems"]["bad.html"])
    assert "request outside the site: https://cdn.example.invalid/lib.js" in bad
    assert "chart 0 (c2) has no drawn marks" in bad
    assert "unrendered glue placeholder" in bad
    assert "console error: boom" in bad
    assert (tmp_path / "shots" / "good.png").is_file()


WIDE = """<html><body><main style="width: 600px"><div class="mechlib-chart" id="w">
<svg width="900" height="50"><g class="mark-rect"><path d="M0,0h10v10z"></path></g></svg></div>
<div class="cell_output"><div class="output stderr"><pre>FutureWarning: x is deprecated</pre></div></div>
<div class="cell_output"><pre>saved to /work/main/_build/x</pre></div></main></body></html>"""


def test_wide_charts_stderr_and_paths_fail(tmp_path):
    site = tmp_path / "html"
    site.mkdir()
    (site / "wide.html").write_text(WIDE)
    problems = "\n".join(check_site(site, tmp_path / "shots")["problems"]["wide.html"])
    assert "svg 0 is 900 px wide" in problems and "past the column" in problems
    assert "stderr output" in problems
    assert "shows '/work/'" in problems


def test_chart_titles_may_not_be_field_names_and_labels_only_defined_names():
    from mechlib.book.site_check import snake_case_problems

    found = snake_case_problems([("role-axis-title", "top1_first"), ("role-legend-title", "copies_operand"),
                                 ("role-legend-label", "copies_operand"), ("role-axis-label", "heldout_acc_new"),
                                 ("role-title-text", "carry_flip"), ("role-axis-title", "first answer token")])
    assert any("'top1_first'" in p and "axis title" in p for p in found)
    assert any("'copies_operand'" in p and "legend title" in p for p in found)  # a defined name, but not as a title
    assert any("'heldout_acc_new'" in p for p in found)  # not a name the book defines
    assert not any("carry_flip" in p or "first answer" in p for p in found)  # a family's name as a facet label is fine
    assert len(found) == 3


def test_table_numbers_carry_at_most_three_significant_digits():
    from mechlib.book.site_check import long_number_problems

    found = long_number_problems(["0.012000", "48.4", "0.998", "1.2345", "12", "\u22120.5000", "n = 1,580", "0.0123"])
    assert found == sorted(f"table number {t!r} has more than 3 significant digits" for t in ("0.012000", "1.2345", "\u22120.5000"))


def test_a_tab_inside_math_is_found_in_the_page_source():
    from mechlib.book.site_check import math_tab_problems

    assert math_tab_problems('<span class="math notranslate nohighlight">\\(a_{\text{raw}}\\)</span>')
    assert not math_tab_problems('<span class="math notranslate nohighlight">\\(a_{\\text{raw}}\\)</span>')


def test_a_nan_or_infinity_in_prose_or_tables_fails():
    from mechlib.book.site_check import nan_problems

    assert nan_problems(["R² from nan to nan", "an inf share", "AUROC NaN"]) != []
    assert len(nan_problems(["R² from nan to nan", "x", "AUROC NaN"])) == 2
    assert nan_problems(["finance and nano-scale info", "Kantamneni", "infinity aside", "0.5 [0.2, 0.9]"]) == []
