"""The layering rules of docs/design.md, checked on the source (see tests/_arch.py)."""

from __future__ import annotations

from tests._arch import analyse

REPORT = analyse()


def test_no_module_touches_another_modules_private_names():
    assert REPORT.private_names == []


def test_lower_layers_never_import_higher_ones():
    assert REPORT.layer_violations == []


def test_the_core_never_imports_adapters():
    assert REPORT.core_imports_adapters == []


def test_adapters_import_only_the_public_api():
    assert REPORT.adapter_private_imports == []


def test_no_import_cycles():
    assert REPORT.cycles == []


def test_the_checker_sees_violations(tmp_path):
    """The checks above can fail: a tree that breaks every rule is reported for each."""
    core = tmp_path / "ckptstore"
    (core / "format").mkdir(parents=True)
    (core / "store").mkdir()
    (tmp_path / "adapters").mkdir()
    (core / "__init__.py").write_text("")
    (core / "format" / "__init__.py").write_text("")
    (core / "store" / "__init__.py").write_text("")
    (core / "format" / "_a.py").write_text("from ..store._b import helper\nfrom ._c import _hidden\n")
    (core / "format" / "_c.py").write_text("from . import _a\ndef _hidden(): pass\n")
    (core / "store" / "_b.py").write_text("import ckptstore.adapters.x\ndef helper(o): return o._secret\n")
    (tmp_path / "adapters" / "__init__.py").write_text("")
    (tmp_path / "adapters" / "x.py").write_text("from ckptstore.store._b import helper\n")
    r = analyse(tmp_path)
    assert any("imports _hidden" in p for p in r.private_names)
    assert any("._secret" in p for p in r.private_names)
    assert any("ckptstore.store._b (layer 4)" in v for v in r.layer_violations)
    assert r.core_imports_adapters and r.adapter_private_imports
    assert ["ckptstore.format._a", "ckptstore.format._c"] in r.cycles
