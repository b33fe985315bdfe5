"""The layering contracts of `layers.toml` hold on today's code, and the checker
(`tests/layer_contracts.py`) finds what breaks them: direct and transitive imports, imports inside
functions, relative imports, package `__init__`s and `importlib` by name — shown on small fake package
trees, since a checker that never fails proves nothing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from layer_contracts import (
    CONTRACTS,
    REPO,
    Contracts,
    ContractsError,
    Graph,
    assign_groups,
    build_graph,
    load,
    main,
    tomllib,
)


@pytest.fixture(scope="module")
def real() -> Contracts:
    """layers.toml on this repository's code (the graph is built once for the tests that read it)."""
    return load()


def test_every_contract_of_layers_toml_is_kept(real: Contracts) -> None:
    results = real.results()
    broken = [r.describe() for r in results if not r.kept]
    assert not broken, "layer contracts broken (layers.toml):\n" + "\n".join(broken)
    names = {r.name for r in results}
    assert any("read side never imports the write side" in n for n in names)
    assert all(r.checked > 0 for r in results)  # no contract checks an empty set of modules


def test_modules_belong_to_their_folders_group() -> None:
    """Groups come from patterns, not a list: a module added to a folder is in that folder's group."""
    groups = tomllib.loads(CONTRACTS.read_text())["groups"]
    expected = {
        "pipeline.format.container": "read_side", "pipeline.store.storage": "read_side",
        "pipeline.read.restore": "read_side", "pipeline.read.fixity": "read_side", "pipeline.text": "read_side",
        "pipeline.audit.reader": "read_side", "pipeline.audit.videos": "tools",
        "pipeline.dataset.plan": "read_side", "pipeline.dataset.ray_source": "tools",
        "pipeline.tools.verify": "tools", "pipeline.tools.compact": "tools",
        "pipeline.archive.plan": "write_side", "pipeline.sources.media": "shared",
        "pipeline.sources.synthetic": "shared", "pipeline.metrics.vmaf": "shared",
        "pipeline.benchmarks.gpu_goals": "write_side_users", "pipeline.training.loop": "write_side_users",
        "codec.gvc.atoms": "codec",
        # modules that do not exist (yet): covered by their folder
        "pipeline.brand_new_reader": "read_side", "pipeline.format.brand_new_object": "read_side",
        "pipeline.read.brand_new_reader": "read_side", "pipeline.tools.brand_new_tool": "tools",
        "pipeline.audit.brand_new_table": "tools", "pipeline.archive.brand_new_stage": "write_side",
        "pipeline.sources.brand_new_source": "shared", "pipeline.metrics.brand_new_metric": "shared",
        "pipeline.benchmarks.brand_new": "write_side_users",
    }  # fmt: skip
    graph = Graph(REPO, ("codec", "pipeline", "jobs"), dict.fromkeys(expected, ""))
    assert assign_groups(graph, groups) == expected


def test_every_module_of_pipeline_sits_in_its_groups_folder(real: Contracts) -> None:
    """The folders of pipeline/ are the groups: each module's group is its folder's, but for the four
    modules layers.toml names (the audit's manifest reader and `--where` filters are read side; the
    dataset's Ray and torch front ends are tools), and no module but `text` sits at the top."""
    groups = tomllib.loads(CONTRACTS.read_text())["groups"]
    graph = real.graph
    folders = {
        "format": "read_side", "store": "read_side", "read": "read_side", "dataset": "read_side",
        "tools": "tools", "audit": "tools", "archive": "write_side", "sources": "shared",
        "metrics": "shared", "benchmarks": "write_side_users", "training": "write_side_users",
    }  # fmt: skip
    named = {
        "pipeline.audit.reader": "read_side", "pipeline.audit.filters": "read_side",
        "pipeline.dataset.ray_source": "tools", "pipeline.dataset.torch_dataset": "tools",
    }  # fmt: skip
    tops = {m.split(".")[1] for m in graph.modules if m.startswith("pipeline.")}
    assert tops == {"text", *folders}, "a new module of pipeline/ goes in the folder of its layer"
    for module, group in assign_groups(graph, groups).items():
        if module.startswith("pipeline.") and module != "pipeline.text":
            assert group == named.get(module, folders[module.split(".")[1]]), module


def test_the_graph_sees_deferred_by_name_and_package_imports_of_the_real_code(real: Contracts) -> None:
    graph = real.graph
    by_target = {(e.target, e.when, e.via) for e in graph.edges["codec.registry"]}
    assert ("codec.gvc.codec", "deferred", "by name") in by_target  # "codec.gvc.codec:GvcCodec"
    assert ("codec.base", "load", "import") in by_target
    dataset = {(e.target, e.when) for e in graph.edges["pipeline.dataset"]}
    assert ("pipeline.dataset.ray_source", "deferred") in dataset  # inside read_archive
    assert not any(e.target == "pipeline.dataset.torch_dataset" and e.when == "load" for e in graph.edges["pipeline.dataset"])  # fmt: skip


# --- the checker on fake trees -----------------------------------------------------------------------

CONFIG = """
packages = ["codec", "pipeline", "jobs"]
[groups]
codec = ["codec"]
jobs = ["jobs"]
read_side = ["pipeline"]
tools = ["pipeline.tool", "pipeline.audit"]
write_side = ["pipeline.archive"]

[[contracts]]
name = "jobs -> pipeline -> codec"
kind = "layers"
layers = ["jobs", "pipeline", "codec"]

[[contracts]]
name = "the read side never imports the write side or Ray"
modules = ["read_side"]
forbidden = ["write_side", "ray"]

[[contracts]]
name = "the read side loads no torch"
scope = "load"
modules = ["read_side"]
forbidden = ["torch"]
"""
READ = "the read side never imports the write side or Ray"


def _tree(root: Path, files: dict[str, str]) -> Path:
    """A package tree: every file named, plus empty `__init__.py`s for codec, pipeline, jobs."""
    for package in ("codec", "pipeline", "jobs", "pipeline/archive"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _results(root: Path, config: str = CONFIG) -> dict[str, str]:
    """Contract name -> "" when kept, else the report (what a CI failure prints)."""
    spec = tomllib.loads(config)
    contracts = Contracts(spec, build_graph(root, tuple(spec["packages"])))
    return {r.name: "" if r.kept else r.describe() for r in contracts.results()}


def _chain(*hops: str) -> str:
    return "\n      ".join(hops)


CLEAN = {
    "codec/base.py": "import numpy\n",
    "pipeline/reader.py": "from codec.base import numpy\n",
    "pipeline/archive/driver.py": "import ray\nfrom pipeline.reader import numpy\n",
    "pipeline/tool.py": "import json\nfrom pipeline import reader\n",
    "jobs/cli.py": "from pipeline.archive import driver\n",
}


def test_a_clean_tree_keeps_every_contract(tmp_path: Path) -> None:
    results = _results(_tree(tmp_path, CLEAN))
    assert results == dict.fromkeys(results, "") and len(results) == 4


def test_a_direct_forbidden_import_is_named_with_its_line(tmp_path: Path) -> None:
    files = {**CLEAN, "pipeline/restore.py": "import os\nfrom pipeline.archive.driver import run\n"}
    report = _results(_tree(tmp_path, files))[READ]
    assert report.startswith(f"BROKEN  {READ} (runtime; ")
    assert _chain("pipeline.restore", "-> pipeline.archive.driver  [pipeline/restore.py:2]") in report
    assert "its package __init__" not in report  # the same import reaching pipeline/archive/__init__: once


def test_a_transitive_forbidden_import_is_reported_with_the_whole_chain(tmp_path: Path) -> None:
    """A read-side module importing (inside a function) a tool that imports the write side: each hop
    with its file and line; the other read-side modules that reach it are named, not repeated."""
    files = {
        **CLEAN,
        "pipeline/restore.py": "from pipeline.locate import find\n",
        "pipeline/locate.py": "def find():\n    from pipeline.tool import scan\n    return scan\n",
        "pipeline/tool.py": "import json\nfrom pipeline.archive.driver import run\n",
    }
    report = _results(_tree(tmp_path, files))[READ]
    assert (
        _chain(
            "pipeline.locate",
            "-> pipeline.tool  [pipeline/locate.py:2, inside a function]",
            "-> pipeline.archive.driver  [pipeline/tool.py:2]",
            "(also reached from pipeline.restore)",
        )
        in report
    )
    # the tool also reaches Ray through the driver: a second chain, three hops from the read side
    assert (
        _chain(
            "pipeline.locate",
            "-> pipeline.tool  [pipeline/locate.py:2, inside a function]",
            "-> pipeline.archive.driver  [pipeline/tool.py:2]",
            "-> ray  [pipeline/archive/driver.py:1]",
        )
        not in report
    )  # no: the chain stops at the first forbidden module
    # the load-scope contract does not follow the deferred hop
    (tmp_path / "pipeline/archive/driver.py").write_text("import torch\n")
    (tmp_path / "pipeline/tool.py").write_text("from pipeline.archive import driver\n")
    results = _results(tmp_path)
    assert results["the read side loads no torch"] == ""
    (tmp_path / "pipeline/locate.py").write_text("from pipeline.tool import driver\n")
    assert (
        _chain(
            "pipeline.locate",
            "-> pipeline.tool  [pipeline/locate.py:1]",
            "-> pipeline.archive.driver  [pipeline/tool.py:1]",
            "-> torch  [pipeline/archive/driver.py:1]",
            "(also reached from pipeline.restore)",
        )
        in _results(tmp_path)["the read side loads no torch"]
    )


def test_relative_imports_and_type_only_imports(tmp_path: Path) -> None:
    """`from .archive import x` resolves against the package; `if TYPE_CHECKING:` never counts."""
    files = {
        **CLEAN,
        "pipeline/view.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray\n",
    }
    assert _results(_tree(tmp_path, files))[READ] == ""
    (tmp_path / "pipeline/view.py").write_text("from .archive import driver\n")
    assert (
        _chain("pipeline.view", "-> pipeline.archive.driver  [pipeline/view.py:1]")
        in _results(tmp_path)[READ]
    )


def test_layers_third_party_and_importlib_by_name(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "codec/registry.py": (
            "import importlib\n_HOMES = {'x': 'pipeline.reader:Reader'}\n"
            "def get(name):\n    return importlib.import_module(_HOMES[name].split(':')[0])\n"
        ),
        "pipeline/frames.py": "import torch.nn.functional\n",
    }
    results = _results(_tree(tmp_path, files))
    layers = results["jobs -> pipeline -> codec: codec never imports jobs, pipeline"]
    assert "-> pipeline.reader  [codec/registry.py:2, inside a function, importlib by name]" in layers
    assert "-> torch.nn.functional  [pipeline/frames.py:1]" in results["the read side loads no torch"]


def test_a_package_init_counts_only_for_what_it_loads(tmp_path: Path) -> None:
    """Importing `pipeline.data.plan` runs `pipeline/data/__init__`: its load-time imports count, the
    ones inside its functions do not (the importer never calls them); naming the package does count."""
    files = {
        **CLEAN,
        "pipeline/data/__init__.py": "from pipeline.data.plan import x\ndef read():\n    import ray\n",
        "pipeline/data/plan.py": "x = 1\n",
        "pipeline/export.py": "from pipeline.data.plan import x\n",
    }
    report = _results(_tree(tmp_path, files))[READ]
    assert _chain("pipeline.data", "-> ray  [pipeline/data/__init__.py:3, inside a function]") in report
    assert "pipeline.export" not in report  # runs the package __init__, never its read()
    (tmp_path / "pipeline/export.py").write_text("from pipeline.data import read\n")
    assert "(also reached from pipeline.export)" in _results(tmp_path)[READ]
    (tmp_path / "pipeline/data/__init__.py").write_text("import ray\n")  # now loading the plan loads Ray
    assert _chain(
        "pipeline.data", "-> ray  [pipeline/data/__init__.py:1]",
        "(also reached from pipeline.data.plan, pipeline.export)",
    ) in _results(tmp_path)[READ]  # fmt: skip
    only_plan = CONFIG.replace('modules = ["read_side"]\nforbidden = ["write_side"', 'modules = ["pipeline.data.plan"]\nforbidden = ["write_side"')  # fmt: skip
    assert _chain(
        "pipeline.data.plan", "-> pipeline.data  [pipeline/data/plan.py is in this package]",
        "-> ray  [pipeline/data/__init__.py:1]",
    ) in _results(tmp_path, only_plan)[READ]  # fmt: skip


def test_an_allowed_import_is_named_scoped_and_must_still_exist(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "pipeline/data.py": "def read():\n    import ray\n",
        "pipeline/export.py": "from pipeline.data import read\n",
    }
    allow = '[[contracts.allow]]\nimport = "pipeline.data -> ray"\nreason = "the Ray entry point"\n'
    config = CONFIG.replace(
        'forbidden = ["write_side", "ray"]\n', 'forbidden = ["write_side", "ray"]\n' + allow
    )
    report = _results(_tree(tmp_path, files), config)[READ]
    # pipeline.data itself may; a read-side module that uses it still reaches Ray, and is named
    assert _chain(
        "pipeline.export", "-> pipeline.data  [pipeline/export.py:1]",
        "-> ray  [pipeline/data.py:2, inside a function]",
    ) in report  # fmt: skip
    (tmp_path / "pipeline/export.py").write_text("")
    assert _results(tmp_path, config)[READ] == ""
    (tmp_path / "pipeline/data.py").write_text("")
    with pytest.raises(ContractsError, match=r"no longer in the code: \['pipeline.data -> ray'\]"):
        _results(tmp_path, config)


def test_mistakes_in_the_contracts_file_are_errors(tmp_path: Path) -> None:
    _tree(tmp_path, CLEAN)
    with pytest.raises(ContractsError, match=r"'pipeline\.nothing' names no module and no group"):
        _results(tmp_path, CONFIG.replace('forbidden = ["torch"]', 'forbidden = ["pipeline.nothing"]'))
    with pytest.raises(ContractsError, match="scope must be one of"):
        _results(tmp_path, CONFIG.replace('scope = "load"', 'scope = "later"'))
    with pytest.raises(ContractsError, match="jobs is in no group"):
        _results(tmp_path, CONFIG.replace('jobs = ["jobs"]\n', ""))
    with pytest.raises(ContractsError, match=r"pipeline\.reader is in two groups equally"):
        _results(tmp_path, CONFIG.replace('codec = ["codec"]', 'codec = ["codec"]\nother = ["pipeline.reader"]\nmore = ["pipeline.reader"]'))  # fmt: skip


def test_the_command_line_prints_every_contract_and_fails_on_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], real: Contracts
) -> None:
    assert main([str(CONTRACTS)]) == 0
    assert capsys.readouterr().out.count("KEPT") == len(real.contracts)
    (tmp_path / "layers.toml").write_text(CONFIG)
    _tree(tmp_path / "repo", {**CLEAN, "codec/base.py": "from jobs.cli import x\n"})
    assert main([str(tmp_path / "layers.toml"), str(tmp_path / "repo")]) == 1
    out = capsys.readouterr().out
    assert "BROKEN  jobs -> pipeline -> codec: codec never imports jobs, pipeline" in out
    assert _chain("codec.base", "-> jobs.cli  [codec/base.py:1]") in out


def test_layers_toml_catches_a_new_module_and_a_deferred_import_in_a_copy_of_the_code(tmp_path: Path) -> None:
    """The real contracts on a copy of the real code with two mistakes: a new file in pipeline/ (in
    no list anywhere) that imports the archive job, and the locator reaching verify (Ray) from inside
    a function. Both are named, the second with the read-side modules that reach it through restore."""
    import shutil

    for package in ("codec", "pipeline", "jobs"):
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("models", "__pycache__")
        )
    (tmp_path / "pipeline/brand_new.py").write_text("from pipeline.archive.plan import plan_gops\n")
    locate = tmp_path / "pipeline/read/locate.py"
    lines = locate.read_text().splitlines()
    line = len(lines) + 3  # after a blank line and the def
    locate.write_text(
        "\n".join([*lines, "", "def _check():", "    from pipeline.tools.verify import verify_archive", ""])
    )
    config = tomllib.loads(CONTRACTS.read_text())
    results = {r.name: r for r in Contracts(config, build_graph(tmp_path)).results()}
    report = results["the read side never imports the write side, Ray, metrics, source reading or the tools"]
    text = report.describe()
    assert _chain("pipeline.brand_new", "-> pipeline.archive.plan  [pipeline/brand_new.py:1]") in text
    assert (
        _chain(
            "pipeline.read.locate",
            f"-> pipeline.tools.verify  [pipeline/read/locate.py:{line}, inside a function]",
        )
        in text
    )
    assert "pipeline.read.restore" in text.split(f"pipeline/read/locate.py:{line}")[1]  # also from restore
    assert [r.name for r in results.values() if not r.kept] == [report.name]  # the load scope ignores it
