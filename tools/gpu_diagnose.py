"""Why do processes that imported gguf or torch crash in llama-cpp-python's model load on CUDA?

Loads each model, fully offloaded, in a fresh process after importing nothing, numpy, yaml,
sentencepiece (gguf imports it when installed), gguf, gguf with sentencepiece blocked, torch, or
llama_cpp before the others; once more under MALLOC_PERTURB_. Each child prints which CUDA,
cuBLAS, OpenMP and C++ runtime files its /proc/self/maps holds after the imports and after the
load, and how it ended (exit code, signal). The causes told apart: (a) the tiny test fixture's
shapes (hidden 64, head_dim 16, vocabulary 283) against a synthetic llama of ordinary head size
and SmolLM2; (b) another package's CUDA libraries bound before ggml-cuda's; (c) two OpenMP
runtimes; (d) a C++ extension imported by gguf (sentencepiece).

    python tools/gpu_diagnose.py --out diag.json [--smollm2 path.gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import importlib, json, sys
LIBS = ("libcudart", "libcublas", "libgomp", "libiomp", "libstdc++", "libggml-cuda", "libsentencepiece", "libtorch_cuda")
def libs():
    return sorted({l.split()[-1] for l in open("/proc/self/maps") if any(k in l for k in LIBS)})
for m in filter(None, sys.argv[2].split(",")):
    if m.startswith("-"):
        sys.modules[m[1:]] = None  # blocked: an import of it raises ImportError
    else:
        importlib.import_module(m)
print("AFTER_IMPORTS " + json.dumps(libs()), flush=True)
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_gpu_layers=-1, n_ctx=256, verbose=False, flash_attn=True)
out = llm.create_completion("Hello, my name is", max_tokens=8, temperature=0.0)
print("AFTER_LOAD " + json.dumps(libs()), flush=True)
print("TEXT " + json.dumps(out["choices"][0]["text"]), flush=True)
"""

PREIMPORTS = ["", "numpy", "yaml", "sentencepiece", "gguf", "-sentencepiece,gguf", "torch", "llama_cpp,gguf",
              "llama_cpp,torch"]


def build_models(folder: Path) -> dict[str, Path]:
    """The tests' tiny llama fixture and a synthetic llama with head_dim 64 (in a child: gguf)."""
    code = f"""
import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}]
from pathlib import Path
import tiny_models as tm
from llama_eagle3.synthetic import SHAPES, write_target
tm.build_target(Path({str(folder / 'fixture.gguf')!r}), "llama")
write_target(Path({str(folder / 'synthetic-tiny.gguf')!r}), SHAPES["tiny"], "Q4_K_M", log=lambda *a: None)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return {"fixture": folder / "fixture.gguf", "synthetic-tiny": folder / "synthetic-tiny.gguf"}


def run_child(model: Path, pre: str, perturb: bool) -> dict:
    env = dict(os.environ)
    if perturb:
        env["MALLOC_PERTURB_"] = "165"
    r = subprocess.run([sys.executable, "-c", CHILD, str(model), pre], capture_output=True, text=True, env=env,
                       timeout=180)
    rec: dict = {"preimport": pre or "(none)", "malloc_perturb": perturb, "returncode": r.returncode,
                 "signal": -r.returncode if r.returncode < 0 else None}
    for line in r.stdout.splitlines():
        key, _, val = line.partition(" ")
        if key in ("AFTER_IMPORTS", "AFTER_LOAD", "TEXT"):
            rec[key.lower()] = json.loads(val)
    if r.returncode != 0:
        rec["stderr_tail"] = r.stderr[-600:]
    return rec


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smollm2", type=Path, default=None)
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp())
    models = build_models(folder)
    if a.smollm2 is not None and a.smollm2.is_file():
        models["smollm2"] = a.smollm2
    jobs = [(name, m, pre, False) for name, m in models.items() for pre in PREIMPORTS]
    jobs += [(name, m, pre, True) for name, m in models.items() for pre in ("", "gguf", "torch")]
    with ThreadPoolExecutor(4) as pool:
        recs = list(pool.map(lambda j: {"model": j[0], **run_child(*j[1:])}, jobs))
    a.out.write_text(json.dumps(recs, indent=1))
    for r in recs:
        end = "ok" if r["returncode"] == 0 else (f"signal {r['signal']}" if r["signal"] else f"exit {r['returncode']}")
        if "ModuleNotFoundError" in r.get("stderr_tail", ""):
            end = "not installed"
        libs = [x for x in r.get("after_load", r.get("after_imports", [])) if "cudart" in x or "cublas" in x or "gomp" in x]
        print(f"{r['model']:<15} {r['preimport']:<22} perturb={int(r['malloc_perturb'])} {end:<10} {libs}")
        if r["returncode"] != 0:
            print("    " + r.get("stderr_tail", "").strip().replace("\n", "\n    ")[-300:])


if __name__ == "__main__":
    main()
