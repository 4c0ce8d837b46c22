"""Stand-ins for the CUDA libraries PyPI's Linux torch links but never calls on a CPU.

PyPI has one torch for Linux, built for CUDA: importing it loads libtorch_cuda.so, which needs
cuDNN, cuBLAS, NCCL, cuSPARSE, ... (2.6 GB of wheels) before any CPU tensor exists. The fixture
environment only ever computes on the CPU, so instead of those wheels it gets, for every library
the loader cannot find, a tiny library of that name defining the symbols torch imports from it.
Each stand-in aborts with a message if a program ever calls into it (only CUDA code would). They
are loaded, with RTLD_GLOBAL, by a .pth hook at interpreter start-up, before torch looks for them.

    python tools/cuda_stand_ins.py VENV    (after the packages are installed; run again: rebuilt)

Needs gcc, nm, readelf and ldd (binutils, libc). The stand-ins go to VENV/cuda-stand-ins.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HOOK = "_gradcam_cuda_stand_ins"
PACKAGES = ["torch", "torchvision"]


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def elf_files():
    """Every shared object the packages ship (their own extension modules and libraries)."""
    files = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        for root in spec.submodule_search_locations:
            for folder, _, names in os.walk(root):
                files += [os.path.join(folder, n) for n in names if re.search(r"\.so(\.|$)", n)]
    return sorted(files)


def symbols(path, which):
    """(name, version or None) of the dynamic symbols nm lists as `which` (defined/undefined)."""
    out = run("nm", "-D", f"--{which}-only", path)
    result = set()
    for line in out.splitlines():
        parts = line.split()
        if not parts:
            continue
        kind, name = parts[-2], parts[-1]
        if which == "undefined" and kind in ("w", "v"):  # weak: may stay undefined
            continue
        name, _, version = name.partition("@")
        result.add((name, version.lstrip("@") or None))
    return result


def version_needs(path):
    """{version name: file} from the object's version-needs section."""
    needs, current = {}, None
    for line in run("readelf", "-V", "--wide", path).splitlines():
        file = re.search(r"File: (\S+)", line)
        if file:
            current = file.group(1)
            continue
        name = re.search(r"Name: (\S+)", line)
        if name and current:
            needs[name.group(1)] = current
    return needs


def ldd(path):
    """(missing sonames, paths of the libraries the loader did find)."""
    missing, found = set(), set()
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (.*?)( \(0x[0-9a-f]+\))?$", line)
        if not m:
            continue
        if m.group(2) == "not found":
            missing.add(m.group(1))
        elif m.group(2).startswith("/"):
            found.add(m.group(2))
    return missing, found


def compile_stub(folder, soname, names, version_nodes, work):
    """A library `soname` defining `names`; version_nodes: {version: names} for versioned ones."""
    source = os.path.join(work, soname + ".c")
    with open(source, "w") as f:
        f.write("#include <stdio.h>\n#include <stdlib.h>\n")
        f.write("static void called(const char *name) {\n")
        f.write(f'  fprintf(stderr, "%s: a stand-in for {soname} (tools/cuda_stand_ins.py) was called; '
                'this environment has no CUDA libraries\\n", name);\n  abort();\n}\n')
        for i, name in enumerate(sorted(names)):
            f.write(f'void s{i}(void) __asm__("{name}");\nvoid s{i}(void) {{ called("{name}"); }}\n')
    args = ["gcc", "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", "-o", os.path.join(folder, soname), source]
    if version_nodes:
        script = os.path.join(work, soname + ".map")
        with open(script, "w") as f:
            for version, members in sorted(version_nodes.items()):
                f.write(f"{version} {{ global: {' '.join(n + ';' for n in sorted(members))} }};\n")
        args.insert(-1, f"-Wl,--version-script={script}")
    subprocess.run(args, check=True)


def main():
    venv = os.path.abspath(sys.argv[1])
    folder = os.path.join(venv, "cuda-stand-ins")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)

    files = elf_files()
    missing, found, needs = set(), set(), {}
    for path in files:
        m, f = ldd(path)
        found |= f
        needs.update(version_needs(path))
        # torchvision finds torch's libraries through torch, once loaded: only torch's own misses count.
        if os.sep + "torch" + os.sep in path:
            missing |= m
    # libcuda.so.1 is the GPU driver, a machine's own (only the on-demand NVRTC library needs it).
    missing -= {os.path.basename(p) for p in files} | {os.path.basename(p) for p in found} | {"libcuda.so.1"}
    if not missing:
        print("cuda_stand_ins: nothing is missing", file=sys.stderr)
    defined = set()
    python = [sys.executable] + [p for p in [sysconfig.get_config_var("LIBDIR")] if p]
    libpython = sysconfig.get_config_var("LDLIBRARY") or ""
    providers = set(files) | found | {os.path.realpath(sys.executable)}
    if libpython and python[1:] and os.path.exists(os.path.join(python[1], libpython)):
        providers.add(os.path.join(python[1], libpython))
    for path in providers:
        defined |= {name for name, _ in symbols(path, "defined")}
    wanted = set()
    for path in files:
        wanted |= {(n, v) for n, v in symbols(path, "undefined") if n not in defined}

    versioned = {}  # soname -> {version: names}
    loose = set()
    for name, version in wanted:
        file = needs.get(version) if version else None
        if file in missing:
            versioned.setdefault(file, {}).setdefault(version, set()).add(name)
        elif version is None:
            loose.add(name)
        # else: versioned against a library that is present (e.g. a newer glibc symbol): not ours.

    with tempfile.TemporaryDirectory() as work:
        # One library per missing name (the loader matches a needed library by its SONAME); the
        # unversioned symbols, whose library nothing records, in one more, loaded first.
        compile_stub(folder, "libgradcam_cuda_stand_in.so", loose, {}, work)
        for soname in sorted(missing):
            nodes = versioned.get(soname, {})
            compile_stub(folder, soname, set().union(*nodes.values()) if nodes else set(), nodes, work)

    site = sysconfig.get_paths(vars={"base": venv, "platbase": venv})["purelib"]
    with open(os.path.join(site, HOOK + ".py"), "w") as f:
        f.write(
            '"""Loads the CUDA stand-ins (tools/cuda_stand_ins.py) before anything imports torch."""\n'
            "import ctypes, os, sys\n"
            "_dir = os.path.join(sys.prefix, 'cuda-stand-ins')\n"
            "_first = 'libgradcam_cuda_stand_in.so'\n"
            "if os.path.isdir(_dir):\n"
            "    for _name in [_first] + sorted(n for n in os.listdir(_dir) if n != _first):\n"
            "        ctypes.CDLL(os.path.join(_dir, _name), mode=ctypes.RTLD_GLOBAL)\n"
        )
    with open(os.path.join(site, HOOK + ".pth"), "w") as f:
        f.write(f"import {HOOK}\n")
    print(f"cuda_stand_ins: {len(missing)} libraries, {len(wanted)} symbols in {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
