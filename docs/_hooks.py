"""MkDocs hooks: the site is built from the repository's markdown as it is.

The README becomes the home page and each plugin's README a page under ``plugins/``; a link to any other
file of the repository (a source file, a benchmark result) becomes a page that shows it. Links are written
for readers of the repository (``../plugins/gojob-grpc/README.md``, ``docs/stores.md``); this hook maps them
to the site's pages, so one text serves both and a link to a missing file still fails the strict build.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_LANG = {".py": "python", ".lua": "lua", ".proto": "protobuf", ".toml": "toml", ".json": "json", ".md": "markdown",
         ".sh": "bash", ".ini": "ini", ".yml": "yaml", ".jsonl": "json"}

# site path -> repository path, for every page of the site
_origin: dict[str, str] = {}


def _site_path(repo_path: str) -> str | None:
    """Where a repository file lives on the site (None: not a file)."""
    if repo_path == "README.md":
        return "index.md"
    if repo_path.startswith("docs/") and repo_path.endswith(".md"):
        return repo_path[len("docs/"):]
    m = re.fullmatch(r"plugins/([^/]+)/README\.md", repo_path)
    if m:
        return f"plugins/{m.group(1)}.md"
    if (ROOT / repo_path).is_file():
        return f"source/{repo_path}" if repo_path.endswith(".md") else f"source/{repo_path}.md"
    return None


def _targets(markdown: str, origin: str) -> list[str]:
    out = []
    for m in _LINK.finditer(markdown):
        target = m.group(2).split("#", 1)[0]
        if not target or "://" in target or target.startswith(("mailto:", "#")):
            continue
        out.append(posixpath.normpath(posixpath.join(posixpath.dirname(origin), target)))
    return out


def on_files(files: Files, config: Any) -> Files:
    _origin.clear()
    for f in list(files):
        if f.src_uri.endswith(".md"):
            _origin[f.src_uri] = "docs/" + f.src_uri
    generated = {"README.md": "index.md"}
    for readme in sorted(ROOT.glob("plugins/*/README.md")):
        generated[str(readme.relative_to(ROOT))] = f"plugins/{readme.parent.name}.md"
    # files linked from any page become pages too
    queue = [*generated, *(("docs/" + f.src_uri) for f in files if f.src_uri.endswith(".md"))]
    seen: set[str] = set()
    while queue:
        repo_path = queue.pop()
        if repo_path in seen or not (ROOT / repo_path).is_file():
            continue
        seen.add(repo_path)
        if repo_path.endswith(".md"):
            for t in _targets((ROOT / repo_path).read_text(), repo_path):
                site = _site_path(t)
                if site is not None and site.startswith("source/"):
                    generated.setdefault(t, site)
                if t.endswith(".md"):
                    queue.append(t)
    for repo_path, site in generated.items():
        _origin[site] = repo_path
        text = (ROOT / repo_path).read_text()
        if site.startswith("source/") and not repo_path.endswith(".md"):
            suffix = Path(repo_path).suffix
            fence = "````" if "```" in text else "```"
            text = f"# `{repo_path}`\n\n{fence}{_LANG.get(suffix, '')}\n{text}\n{fence}\n"
        files.append(File.generated(config, site, content=text))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    origin = _origin.get(page.file.src_uri, "docs/" + page.file.src_uri)
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(m: re.Match[str]) -> str:
        link = m.group(2)
        target, _, anchor = link.partition("#")
        if not target or "://" in target or target.startswith("mailto:"):
            return m.group(0)
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(origin), target))
        site = _site_path(repo_path)
        if site is None:  # a folder, or nothing at all: leave it for the strict build to report
            return m.group(0)
        new = posixpath.relpath(site, here or ".")
        return f"{m.group(1)}{new}{'#' + anchor if anchor else ''}{m.group(3)}"

    return _LINK.sub(rewrite, markdown)
