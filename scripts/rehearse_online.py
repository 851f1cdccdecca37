"""Rehearse the online path offline: the chapter-world cells of notebooks 02, 04, 06 and 07
against local stand-ins for the download hosts.

    .venv/bin/python scripts/rehearse_online.py            # what scripts/test.sh runs
    .venv/bin/python scripts/rehearse_online.py --keep DIR  # keep the files, caches, notebooks

Offline (CI, this machine) the notebooks only ever take the fallback: random weights and
scikit-image's cat. This script makes every line of the pretrained path run before a reader
sees it: download, cache, hash check, safe load, class names, DINO's attention heads.

1. Builds the files the real hosts serve, in their formats, with random values (nothing
   large is committed): torchvision ResNet-18 and VGG-16 state dicts saved with
   ``torch.save`` and named ``<arch>-<own sha256 prefix>.pth`` as torch hub names them;
   timm ViT-S/16 and DINO ViT-S/8 as ``model.safetensors`` + ``config.json`` hub
   repositories; a JPEG for the photo.
2. Serves them from 127.0.0.1 (``scripts/fake_hosts.py``) as the hosts do (the hub's
   ``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size`` and its 302 to a storage host;
   GitHub's 302 to raw.githubusercontent.com), and first checks that ``huggingface_hub``'s
   own client downloads from the stand-in and finds what the package caches.
3. Runs the notebooks' chapter-world cells with nbclient in a kernel whose environment has
   ``CHAPTER6_MIRROR`` (the one variable that points the package at the stand-in) and
   empty caches. Which cells: every cell that loads an ImageNet model or the photo, every
   later cell that uses what those cells defined, and the earlier cells they need (found
   by reading each cell's names with ``ast``). The notebooks run whole, offline, in nbval;
   the rest of a notebook takes the same path online as offline, so it is not run twice.
   One cell is prepended in memory (the notebook files are untouched): the stand-in
   publishes its own random weights, so torchvision's published names (which carry the
   real files' hash prefixes) are pointed at the stand-in's names.
4. Fails unless every ImageNet model in the kernel came back with ``weights ==
   "imagenet"``, every photo is the Samoyed stand-in, no cell printed a
   ``[chapter6_utils]`` fallback notice, and each file was downloaded exactly once (the
   later notebooks read the cache).
"""
from __future__ import annotations

import argparse
import ast
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_hosts  # noqa: E402

NOTEBOOKS = ["02_saliency_and_smoothgrad", "04_layerwise_relevance_propagation", "06_vit_attention",
             "07_side_by_side"]
TORCHVISION = {"resnet18": "ResNet18_Weights", "vgg16": "VGG16_Weights"}
TIMM = ["vit_small_patch16_224", "vit_small_patch8_224.dino"]
IMAGENET_NAMES = list(TORCHVISION) + TIMM
CELL_TIMEOUT = 600  # seconds: a hang guard, not a speed limit


# --------------------------------------------------------------------------- cell selection
def _scan(stmt) -> tuple[set, set]:
    """(free names a top-level statement reads, names it binds), respecting the scopes of
    functions, lambdas and comprehensions; a name the statement binds before reading it
    (a loop variable) is not free."""
    events, binds = [], set()

    def visit(node, local: frozenset):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if not isinstance(node, ast.Lambda):
                binds.add(node.name)
                for d in node.decorator_list:
                    visit(d, local)
            a = node.args
            for default in a.defaults + [d for d in a.kw_defaults if d]:
                visit(default, local)
            params = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x}
            body = node.body if isinstance(node.body, list) else [node.body]
            inner = local | params | {n.id for b in body for n in ast.walk(b)
                                      if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            for b in body:
                visit(b, inner)
            return
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            targets = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
            for child in ast.iter_child_nodes(node):
                visit(child, local | targets)
            return
        if isinstance(node, ast.ClassDef):
            binds.add(node.name)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            binds.update((a.asname or a.name).split(".")[0] for a in node.names)
            return
        if isinstance(node, ast.Name) and node.id not in local:
            if isinstance(node.ctx, ast.Store):
                binds.add(node.id)
            events.append((node.lineno, node.col_offset, isinstance(node.ctx, ast.Store), node.id))
            return
        for child in ast.iter_child_nodes(node):
            visit(child, local)

    visit(stmt, frozenset())
    free, bound = set(), set()
    for _, _, store, name in sorted(events):
        if store:
            bound.add(name)
        elif name not in bound:
            free.add(name)
    return free, binds


def _statements(source: str) -> list:
    """``[(free names, bound names, text)]`` for each top-level statement of a cell;
    magics and shell lines are dropped before parsing."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return [(set(), set(), code)]
    return [(*_scan(stmt), ast.unparse(stmt)) for stmt in tree.body]


def chapter_cells(nb) -> list[int]:
    """Indices of the code cells to run: the chapter-world cells and the earlier cells
    whose definitions they read.

    A statement is of the chapter world when it loads an ImageNet model or the photo, or
    reads a name that such a statement bound (a rebinding by another statement ends
    that); a cell is when one of its statements is."""
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    stmts = {i: _statements(nb.cells[i].source) for i in code}
    markers = ["samoyed("] + [f"'{n}'" for n in IMAGENET_NAMES]  # ast.unparse writes '...' quotes
    tainted, chapter = set(), set()
    for i in code:
        for free, binds, text in stmts[i]:
            if any(m in text for m in markers) or free & tainted:
                tainted |= binds
                chapter.add(i)
            else:
                tainted -= binds
    # the cell-level names: read before the cell binds them, and bound anywhere in it
    reads, binds = {}, {}
    for i in code:
        reads[i], binds[i] = set(), set()
        for free, bound, _ in stmts[i]:
            reads[i] |= free - binds[i]
            binds[i] |= bound

    def defining(i: int, name: str):
        return next((j for j in reversed(code) if j < i and name in binds[j]), None)

    selected, todo = set(chapter), list(chapter)
    while todo:  # backward: the cells that define what the selected ones read
        i = todo.pop()
        for name in reads[i]:
            j = defining(i, name)
            if j is not None and j not in selected:
                selected.add(j)
                todo.append(j)
    return sorted(selected)


# --------------------------------------------------------------------------- the run
PATCH_CELL = """# Added by scripts/rehearse_online.py, in memory only. The stand-in host publishes random
# weights under torch hub names that carry their own hash prefix; point torchvision's
# published names at them (the package reads these URLs when it loads a model).
import torchvision
{assignments}
"""

CHECK_CELL = """# Added by scripts/rehearse_online.py: did the pretrained path run?
import json as _json
import PIL.Image as _Image
import torch.nn as _nn
_imagenet = {names!r}
_loaded = {{k: v.ch6.weights for k, v in dict(globals()).items()
           if isinstance(v, _nn.Module) and getattr(getattr(v, "ch6", None), "name", None) in _imagenet}}
_photos = {{k: v.info.get("source") for k, v in dict(globals()).items() if isinstance(v, _Image.Image)}}
print("REHEARSAL " + _json.dumps({{"models": _loaded, "photos": _photos}}))
"""


def run_notebook(name: str, patch: str, env: dict) -> dict:
    import json

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    keep = chapter_cells(nb)
    cells = [nbformat.v4.new_code_cell(patch)] + [nb.cells[i] for i in keep]
    cells.append(nbformat.v4.new_code_cell(CHECK_CELL.format(names=IMAGENET_NAMES)))
    run = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    client = NotebookClient(run, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    t0 = time.perf_counter()
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    seconds = time.perf_counter() - t0
    texts = []
    for cell in run.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") if out.get("output_type") == "stream" else
                         str(out.get("data", {}).get("text/plain", "")))
    report = next(json.loads(t.split("REHEARSAL ", 1)[1].splitlines()[0]) for t in texts if "REHEARSAL " in t)
    notices = [line for t in texts for line in t.splitlines() if line.startswith("[chapter6_utils]")]
    return {"cells": keep, "of": sum(c.cell_type == "code" for c in nb.cells), "seconds": seconds,
            "models": report["models"], "photos": report["photos"], "notices": notices, "run": run}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, help="keep the fake files, caches and executed notebooks here")
    ap.add_argument("--only", action="append", choices=NOTEBOOKS, help="rehearse these notebooks only")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="chapter6-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    failures, t_start = [], time.perf_counter()
    try:
        t0 = time.perf_counter()
        files = work / "published"
        checkpoints = {arch: fake_hosts.torchvision_checkpoint(arch, files) for arch in TORCHVISION}
        repos = dict(fake_hosts.timm_hub_repo(arch, files) for arch in TIMM)
        photo = fake_hosts.photo_jpeg(files / "dog.jpg")
        size = sum(p.stat().st_size for p in files.rglob("*") if p.is_file())
        print(f"rehearsal: built the stand-in files ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")

        with fake_hosts.FakeHosts() as hosts:
            urls = {arch: hosts.add_torch_checkpoint(path) for arch, path in checkpoints.items()}
            for repo_id, repo_files in repos.items():
                hosts.add_hub_repo(repo_id, repo_files)
            hosts.add_photo(photo)
            failures += check_hub_client(hosts, repos, work)

            env = {k: v for k, v in os.environ.items() if k not in ("CHAPTER6_OFFLINE", "HF_HUB_OFFLINE",
                                                                  "TRANSFORMERS_OFFLINE", "MPLBACKEND")}
            env.update(CHAPTER6_MIRROR=hosts.url, CHAPTER6_CACHE=str(work / "cache"),
                       TORCH_HOME=str(work / "torch"), HF_HOME=str(work / "hf"), PYTHONUNBUFFERED="1")
            for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
                env.pop(var, None)
            patch = PATCH_CELL.format(assignments="\n".join(
                f"torchvision.models.{enum}.IMAGENET1K_V1.value.url = {urls[arch]!r}"
                for arch, enum in TORCHVISION.items()))
            before = len(hosts.log)  # requests from here on are the notebooks'
            for name in args.only or NOTEBOOKS:
                try:
                    r = run_notebook(name, patch, env)
                except Exception as err:  # a cell raised: nbclient says which
                    failures.append(f"{name}: {type(err).__name__}: {str(err)[-1500:]}")
                    print(f"rehearsal: {name}: FAILED")
                    continue
                if args.keep:
                    import nbformat
                    nbformat.write(r["run"], work / f"{name}.rehearsed.ipynb")
                print(f"rehearsal: {name}: {len(r['cells'])} of {r['of']} code cells in {r['seconds']:.0f} s; "
                      f"models {r['models']}; photos {r['photos']}")
                if not r["models"]:
                    failures.append(f"{name}: no ImageNet model was loaded")
                failures += [f"{name}: {k} has {w} weights, not imagenet" for k, w in r["models"].items()
                             if w != "imagenet"]
                failures += [f"{name}: photo {k} came from {s!r}, not the Samoyed" for k, s in r["photos"].items()
                             if s != "samoyed"]
                failures += [f"{name}: fallback notice: {line}" for line in r["notices"]]
            notebook_gets = [path for method, path, _ in hosts.log[before:] if method == "GET"]
            expected = {arch: f"models/{p.name}" for arch, p in checkpoints.items()}
            expected.update({repo: f"cdn-lfs.hf.co/repos/{fake_hosts.sha256(f['model.safetensors'])[:2]}"
                             for repo, f in repos.items()})
            expected["photo"] = "raw.githubusercontent.com/pytorch/hub/master/images/dog.jpg"
            rehearsed = set(args.only or NOTEBOOKS)
            for what, fragment in expected.items():
                n = sum(fragment in path for path in notebook_gets)
                if rehearsed == set(NOTEBOOKS) and n != 1:
                    failures.append(f"{what}: downloaded {n} times by the notebooks (once, then the cache)")
                print(f"rehearsal: {what}: downloaded {n} time(s)")
            from huggingface_hub import try_to_load_from_cache

            for repo_id in repos:
                if not isinstance(try_to_load_from_cache(repo_id, "model.safetensors",
                                                         cache_dir=str(work / "hf" / "hub")), str):
                    failures.append(f"huggingface_hub does not find the package's download of {repo_id} in its cache")
            print(f"rehearsal: the notebooks sent {len(notebook_gets)} GET and "
                  f"{sum(m == 'HEAD' for m, _, _ in hosts.log[before:])} HEAD requests")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"rehearsal: {'FAILED' if failures else 'passed'} in {time.perf_counter() - t_start:.0f} s")
    for f in failures:
        print("  - " + f)
    return 1 if failures else 0


def check_hub_client(hosts, repos, work: Path) -> list[str]:
    """huggingface_hub's own client must accept the stand-in (so it answers as the hub does),
    and must find in its cache what the package downloads there."""
    import filecmp

    from huggingface_hub import hf_hub_download

    failures = []
    repo_id, files = next(iter(repos.items()))
    for filename, path in files.items():
        try:
            got = hf_hub_download(repo_id, filename, endpoint=hosts.url + "/huggingface.co",
                                  cache_dir=str(work / "hub-client"))
        except Exception as err:
            failures.append(f"huggingface_hub rejects the stand-in for {repo_id}/{filename}: {err}")
            continue
        if not filecmp.cmp(got, path, shallow=False):
            failures.append(f"huggingface_hub downloaded other bytes for {repo_id}/{filename}")
    shutil.rmtree(work / "hub-client", ignore_errors=True)
    print(f"rehearsal: huggingface_hub's client {'rejects' if failures else 'accepts'} the stand-in hub")
    return failures


if __name__ == "__main__":
    sys.exit(main())
