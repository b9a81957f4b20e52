"""The Slicer Extensions Index would accept MammoPatch.json and the top-level CMakeLists.txt.

The rules are those of the index's own check, scripts/check_description_files.py in
github.com/Slicer/ExtensionsIndex (line numbers below are of that file), and of the catalog entry
schema the entry names (Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json in Slicer),
reimplemented here because the real script clones the repository and downloads every URL. Where
the script downloads (icon and screenshot URLs), this test checks instead that each URL points into
the repository of ``scm_url`` at ``scm_revision`` and names a committed image of a type the script
accepts. Not checked here: the '3d-slicer-extension' GitHub topic and that each build dependency is
itself in the index (both need the network; PyTorch is)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import List

import pytest
from conftest import REPO

#: check_description_files.py:802-864, ACCEPTED_EXTENSION_CATEGORIES.
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT",
    "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning",
    "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography",
    "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
}
#: The schema's properties (additionalProperties: false) and their JSON types.
SCHEMA_PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                     "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
SCHEMA_REQUIRED = ("$schema", "category", "scm_url")
#: check_description_files.py:489, the license file names looked for in the repository root.
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
#: check_description_files.py:287-294: image types the icon and screenshot URLs must serve.
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif"}
SIZE_LIMIT_MB = 100  # check_description_files.py:466
#: Slicer's extension template's placeholder (Utilities/Templates/Extensions/Default/CMakeLists.txt:8).
TEMPLATE_CONTRIBUTORS = "John Doe (AnyWare Corp.)"
ICON_URL = r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)'  # :424
SCREENSHOT_URLS = r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)'  # :440


def _cmake_value(cmake: str, pattern: str):
    match = re.findall(pattern, cmake, re.IGNORECASE | re.MULTILINE)
    return match[0].strip() if match else None


def index_problems(entry_path: Path, cmake_path: Path, repo: Path) -> List[str]:
    """Every rule of the index's check (and the schema) that the entry and CMakeLists break."""
    problems = []
    name = entry_path.stem
    raw = entry_path.read_bytes()
    if b"\r" in raw:  # check_json_file_format, :107-114
        problems.append("catalog entry has non-LF line endings")
    entry = json.loads(raw)
    for key in SCHEMA_REQUIRED:
        if key not in entry:
            problems.append(f"schema: {key} is missing")
    for key, value in entry.items():
        kind = SCHEMA_PROPERTIES.get(key)
        if kind is None:
            problems.append(f"schema: {key} is not allowed")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"schema: {key} must be {kind.__name__}")
    if not 1 <= entry.get("tier", 1) <= 5:
        problems.append("schema: tier must be 1 to 5")
    if not all(isinstance(item, str) for item in entry.get("build_dependencies", [])):
        problems.append("schema: build_dependencies must be strings")
    if not str(entry.get("$schema", "")).startswith(
            "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-"):
        problems.append("schema: $schema is not a Slicer catalog entry schema")
    if name.lower().startswith("slicer"):  # check_extension_name, :189-203
        problems.append("extension name starts with 'Slicer'")
    if entry.get("category") not in ACCEPTED_CATEGORIES:  # check_category, :168-172
        problems.append(f"category {entry.get('category')!r} is unknown to the index")
    scm_url = entry.get("scm_url", "")
    parts = urllib.parse.urlsplit(scm_url)
    if "://" not in scm_url or parts.scheme not in ("git", "https"):  # check_scm_url_syntax, :175-187
        problems.append(f"scm_url {scm_url!r}: scheme must be git or https")
    repo_name = Path(parts.path.strip("/")).stem  # check_git_repository_name, :205-234
    if not repo_name.startswith(("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")):
        problems.append(f"repository name {repo_name!r} does not start with 'Slicer'")

    cmake = cmake_path.read_text(encoding="utf-8")
    project = _cmake_value(cmake, r"project\s*\(\s*([^\s\)\n\r]+)")  # check_cmakelists_content, :399-419
    if project is None or project.strip("\"'") != name:
        problems.append(f"CMakeLists project {project!r} is not the entry's name {name!r}")
    owner_repo = parts.path.strip("/")
    owner_repo = owner_repo[:-4] if owner_repo.endswith(".git") else owner_repo
    raw_base = f"https://raw.githubusercontent.com/{owner_repo}/{entry.get('scm_revision', 'main')}/"
    icon = _cmake_value(cmake, ICON_URL)  # :421-435
    screenshots = _cmake_value(cmake, SCREENSHOT_URLS)  # :437-451
    if icon is None:
        problems.append("No EXTENSION_ICONURL")
    if screenshots is None:
        problems.append("No EXTENSION_SCREENSHOTURLS")
    for url in ([icon] if icon else []) + (screenshots.split() if screenshots else []):
        problems += _image_url_problems(url, raw_base, repo)
    homepage = _cmake_value(cmake, r'set\s*\(EXTENSION_HOMEPAGE\s*"([^"]+)"\)')
    if not homepage or not homepage.startswith(f"https://github.com/{owner_repo}"):
        problems.append(f"EXTENSION_HOMEPAGE {homepage!r} is not in the repository of scm_url")
    if _cmake_value(cmake, r'set\s*\(EXTENSION_CATEGORY\s*"([^"]+)"\)') != entry.get("category"):
        problems.append("EXTENSION_CATEGORY differs from the entry's category")
    depends = _cmake_value(cmake, r'set\s*\(EXTENSION_DEPENDS\s*"([^"]+)"\)') or "NA"
    if (depends.split() if depends != "NA" else []) != entry.get("build_dependencies", []):
        problems.append("EXTENSION_DEPENDS differs from the entry's build_dependencies")
    contributors = _cmake_value(cmake, r'set\s*\(EXTENSION_CONTRIBUTORS\s*"([^"]+)"\)')
    if not contributors or contributors == TEMPLATE_CONTRIBUTORS:
        problems.append("EXTENSION_CONTRIBUTORS is empty or the template's placeholder")

    if not any((repo / license_name).is_file() for license_name in LICENSE_NAMES):  # check_license_file, :486-501
        problems.append("no license file in the repository root")
    return problems


def _image_url_problems(url: str, raw_base: str, repo: Path) -> List[str]:
    """validate_image_url (:274-305) downloads the URL; here it must name a committed image of the
    scm_url repository at scm_revision, with no URL parameters (Slicer's extension docs)."""
    if not url.startswith(raw_base) or "?" in url or "&" in url:
        return [f"{url} is not a file of the repository at {raw_base}"]
    path = repo / url[len(raw_base):]
    if not path.is_file():
        return [f"{url}: {path.relative_to(repo)} is not in the repository"]
    head, suffix = path.read_bytes()[:8], path.suffix.lower()
    if not any(head.startswith(magic) and suffix in (kind, ".jpeg") for magic, kind in IMAGE_MAGIC.items()):
        return [f"{url} is not a PNG, JPEG or GIF image"]
    return []


def test_the_index_accepts_the_extension():
    assert index_problems(REPO / "MammoPatch.json", REPO / "CMakeLists.txt", REPO) == []


def test_each_rule_is_applied(tmp_path):
    """A copy with the defects of issue 33 (unknown category, URLs outside the repository) and
    others the index refuses is refused rule by rule."""
    entry = json.loads((REPO / "MammoPatch.json").read_text())
    entry.update(category="Mammography", scm_url="ssh://github.com/MammoPatch/MammoPatch.git", tier=7, extra=1)
    bad_entry = tmp_path / "SlicerMammoPatch.json"
    bad_entry.write_bytes(json.dumps(entry).replace("{", "{\r\n", 1).encode())
    cmake = (REPO / "CMakeLists.txt").read_text()
    cmake = re.sub(r'set\(EXTENSION_ICONURL "[^"]+"\)', 'set(EXTENSION_ICONURL "https://example.org/icon.png")', cmake)
    cmake = cmake.replace('set(EXTENSION_CONTRIBUTORS "', f'set(EXTENSION_CONTRIBUTORS "{TEMPLATE_CONTRIBUTORS}")\n#"')
    bad_cmake = tmp_path / "CMakeLists.txt"
    bad_cmake.write_text(cmake)
    problems = "\n".join(index_problems(bad_entry, bad_cmake, tmp_path))
    for expected in ("non-LF", "extra is not allowed", "tier must be 1 to 5", "starts with 'Slicer'",
                     "'Mammography' is unknown", "scheme must be git or https", "'MammoPatch' does not start",
                     "project 'MammoPatch' is not the entry's name", "https://example.org/icon.png is not a file",
                     "MammoPatch-overlay.png is not a file of the repository", "EXTENSION_HOMEPAGE",
                     "EXTENSION_CATEGORY differs", "template's placeholder", "no license file"):
        assert expected in problems
    (tmp_path / "LICENSE").write_text("license")
    missing = index_problems(REPO / "MammoPatch.json", REPO / "CMakeLists.txt", tmp_path)
    assert missing == [f"{url}: {url.split('/main/')[1]} is not in the repository" for url in _image_urls()]


def _image_urls() -> List[str]:
    cmake = (REPO / "CMakeLists.txt").read_text()
    return [_cmake_value(cmake, ICON_URL)] + _cmake_value(cmake, SCREENSHOT_URLS).split()


def test_repository_checkout_is_under_the_size_limit():
    """check_repository_size (:463-483): the clone must stay under 100 MB (the committed files here;
    the clone's .git history counts there too)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    total = sum((REPO / name).stat().st_size for name in files.decode().split("\0") if name and (REPO / name).is_file())
    assert total < SIZE_LIMIT_MB * 1024 * 1024
