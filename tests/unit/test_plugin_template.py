"""`pitrkit plugin-template NAME`: the files it writes, from the package data, and its
refusals. (Installing what it writes and running its tests: tests/integration/
test_plugin_example.py.)"""

from __future__ import annotations

import tomllib

from pitrkit.cli import main


def test_writes_a_distribution_for_the_scheme(tmp_path, capsys):
    target = tmp_path / "new"
    assert main(["plugin-template", "azure-blob", "--dir", str(target)]) == 0
    written = sorted(str(path.relative_to(target)) for path in target.rglob("*") if path.is_file())
    assert written == ["README.md", "pitrkit_azure_blob/__init__.py", "pitrkit_azure_blob/storage.py",
                       "pyproject.toml", "tests/conftest.py", "tests/test_conformance.py", "tests/test_faults.py"]
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == "pitrkit-azure-blob"
    assert project["project"]["entry-points"]["pitrkit.plugins"] == {"azure-blob": "pitrkit_azure_blob"}
    for path in target.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")  # every placeholder filled in, valid Python
        assert "$" not in path.read_text()
    assert "class AzureBlobStorage:" in (target / "pitrkit_azure_blob" / "storage.py").read_text()
    assert capsys.readouterr().out.startswith(f"{target}: the distribution pitrkit-azure-blob, entry point "
                                              "'azure-blob' -> pitrkit_azure_blob\n")


def test_refuses_what_it_cannot_write(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").touch()
    for argv, message in [
        (["S3"], "plugin-template: 'S3' is not a URL scheme for a plugin (lower-case letters, digits and '-', "
                 "starting with a letter)"),
        (["file"], "plugin-template: 'file' is pitrkit's own: a plugin cannot replace it"),
        (["s3", "--dir", str(tmp_path / "taken")],
         f"plugin-template: {tmp_path / 'taken'} already exists and is not an empty directory"),
    ]:
        assert main(["plugin-template", *argv]) == 2
        assert capsys.readouterr().err == f"pitrkit: {message}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]
