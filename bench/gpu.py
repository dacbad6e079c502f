"""GPU benchmark (issue 8): the fp16 graph on CUDA, plain `run` vs IO binding, a batch-size sweep, PyTorch fp16
eager on the same batches, the GPU's arithmetic limit for this model, and the served pipeline vs the bare session.

    python -m bench.gpu --model DIR --out DIR                 # on a GPU machine (bench/gpu_device.sh prepares it)
    python -m bench.gpu --device cpu --batches 1,4 --seq-len 16 --seconds 0.5 ...   # CPU smoke run (tests)

`--model` is a Hugging Face BERT directory (it feeds PyTorch); `--artifact` is its exported artifact directory
(made from `--model` with `python -m export` when missing). On `--device cpu` everything runs with fp32 and the
CPU provider, so the same code paths are exercised where there is no GPU.

Method (the device library's METHOD.md): every input is random token ids (never zeros), drawn afresh per batch
size and rotated among a few sets so repeats do not time a cache; each contender is warmed up, then timed over
repeated calls with the device synchronised around the timed region, and the median per call is reported. The
fp16 graph and PyTorch fp16 are checked against PyTorch fp32 (cosine of the pooled embeddings) before timing.
Tokens/s counts B·T (all rows are exactly T tokens, so there is no padding). The limit is the model's FLOPs per
token (bench/roofline.py) against a large matmul's measured rate in the same precision on the same device.
Prints a markdown table last and writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import roofline

log = logging.getLogger("bench.gpu")

INPUT_SETS = 3  # distinct random batches per size, cycled through while timing


@dataclass(frozen=True)
class Target:
    """Where the benchmark runs: 'cuda' (fp16 graph, CUDA provider, torch fp16) or 'cpu' (fp32 everywhere)."""

    device: str

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def graph(self) -> str:
        return "fp16" if self.cuda else "fp32"

    @property
    def provider(self) -> str:
        return "CUDAExecutionProvider" if self.cuda else "CPUExecutionProvider"


# --- environment and limit ----------------------------------------------------------------------------------

def environment(target: Target) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
        "torch": torch.__version__, "device": target.device,
    }
    if target.cuda:
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return env


def matmul_rate(target: Target, n: int = 8192, repeats: int = 10) -> dict[str, Any]:
    """The practical arithmetic peak: fp16 n³ matmul through torch on the GPU (random data), else numpy fp32."""
    if not target.cuda:
        return roofline.matmul_flops_per_s()
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    times = time_calls(lambda: a @ b, torch.cuda.synchronize, warmup=3, repeats=repeats, max_seconds=30)
    best = statistics.median(times)
    return {"n": n, "dtype": "float16", "median_seconds": best, "flops_per_s": 2.0 * n**3 / best}


# --- timing -------------------------------------------------------------------------------------------------

def time_calls(call: Callable[[], Any], sync: Callable[[], Any], *, warmup: int, repeats: int,
               max_seconds: float) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then up to `repeats` timed ones (capped by `max_seconds`), each
    synchronised so the host clock measures finished device work."""
    for _ in range(warmup):
        call()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < max_seconds):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def random_batches(rng: np.random.Generator, batch: int, seq_len: int, *, vocab: int, cls: int,
                   sep: int) -> list[dict[str, np.ndarray]]:
    """INPUT_SETS feeds of real-looking ids: [CLS] w… [SEP], no padding, ids drawn from the word-piece range."""
    feeds = []
    for _ in range(INPUT_SETS):
        ids = rng.integers(1000, vocab, size=(batch, seq_len), dtype=np.int64)
        ids[:, 0], ids[:, -1] = cls, sep
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return feeds


class Cycle:
    """Call `fn` on the next prepared input each time, so repeated calls do not reuse one buffer."""

    def __init__(self, fn: Callable[[Any], Any], inputs: list[Any]) -> None:
        self.fn, self.inputs, self.i = fn, inputs, 0

    def __call__(self) -> Any:
        self.i = (self.i + 1) % len(self.inputs)
        return self.fn(self.inputs[self.i])


# --- contenders ---------------------------------------------------------------------------------------------

def ort_session(path: Path, target: Target):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = [target.provider] + (["CPUExecutionProvider"] if target.cuda else [])
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if session.get_providers()[0] != target.provider:
        raise RuntimeError(f"onnxruntime enabled {session.get_providers()}, not {target.provider}")
    return session


def ort_plain(session) -> Callable[[dict[str, np.ndarray]], Any]:
    """What the server does: numpy in, numpy out (host-to-device and device-to-host copies included)."""
    return lambda feeds: session.run(["sentence_embedding"], feeds)


def ort_io_binding(session, feeds_list: list[dict[str, np.ndarray]], target: Target) -> tuple[Callable[[], Any],
                                                                                               Callable[[], Any]]:
    """Inputs copied to the device once and outputs left there: the session's own compute, no transfers."""
    import onnxruntime as ort

    where = "cuda" if target.cuda else "cpu"
    bindings = []
    for feeds in feeds_list:
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, where, 0))
        binding.bind_output("sentence_embedding", where)
        bindings.append(binding)
    call = Cycle(session.run_with_iobinding, bindings)
    return call, lambda: bindings[call.i].synchronize_outputs()


def torch_models(model_dir: Path, target: Target) -> dict[str, Any]:
    """Our encoder (model/) and, when transformers is installed, Hugging Face's BertModel with SDPA attention."""
    import torch

    from model import load_checkpoint

    dtype = torch.float16 if target.cuda else torch.float32
    models: dict[str, Any] = {"torch-ours": load_checkpoint(model_dir).encoder.to(target.device, dtype).eval()}
    try:
        from transformers import AutoModel
    except ImportError:
        log.warning("transformers is not installed: the Hugging Face eager baseline is left out")
        return models
    hf = AutoModel.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
    models["torch-hf-sdpa"] = hf.to(target.device).eval()
    return models


def torch_call(name: str, model: Any, target: Target) -> Callable[[dict[str, Any]], Any]:
    import torch

    def run(feeds: dict[str, Any]) -> Any:
        with torch.inference_mode():
            out = model(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
            return out.sentence_embedding if name == "torch-ours" else out.last_hidden_state
    return run


def to_torch(feeds_list: list[dict[str, np.ndarray]], target: Target) -> list[dict[str, Any]]:
    import torch

    return [{k: torch.from_numpy(v).to(target.device) for k, v in feeds.items()} for feeds in feeds_list]


def parity(session, models: dict[str, Any], model_dir: Path, target: Target, feeds: dict[str, np.ndarray]) -> dict:
    """Pooled-embedding cosine of each timed contender vs our encoder in fp32 on the same device: proof that
    what is timed computes the model (fp16 lands near 0.9999, a broken graph far below)."""
    import torch

    from model import load_checkpoint

    ref_model = load_checkpoint(model_dir).encoder.to(target.device, torch.float32).eval()
    batch = to_torch([feeds], target)[0]
    with torch.inference_mode():
        ref = ref_model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        ref = ref.sentence_embedding.float().cpu().numpy()
        ours = models["torch-ours"](batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        ours = ours.sentence_embedding.float().cpu().numpy()
    got = {"onnxruntime": session.run(["sentence_embedding"], feeds)[0], "torch-ours": ours}
    return {name: float(_cosine(vec, ref).min()) for name, vec in got.items()}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- the sweep ----------------------------------------------------------------------------------------------

def sweep(args: argparse.Namespace, target: Target, artifact: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    import torch

    session = ort_session(artifact / manifest["graphs"][target.graph]["file"], target)
    models = torch_models(args.model, target)
    special = manifest.get("special_tokens", {})
    vocab = int(manifest["config"]["vocab_size"])
    rng = np.random.default_rng(args.seed)
    sync_torch = torch.cuda.synchronize if target.cuda else (lambda: None)
    timing = {"warmup": args.warmup, "repeats": args.repeats, "max_seconds": args.seconds}
    rows = []
    checked = False
    for batch in args.batches:
        feeds = random_batches(rng, batch, args.seq_len, vocab=vocab, cls=special.get("cls", 101),
                               sep=special.get("sep", 102))
        if not checked:
            cos = parity(session, models, args.model, target, feeds[0])
            log.info("parity vs our encoder in fp32 (min cosine): %s", cos)
            floor = 0.999 if target.cuda else 0.99999
            if min(cos.values()) < floor:
                raise RuntimeError(f"a contender does not compute the model: {cos}")
            checked = True
        seconds: dict[str, float] = {}
        seconds["ort-run"] = statistics.median(time_calls(Cycle(ort_plain(session), feeds), lambda: None, **timing))
        call, sync = ort_io_binding(session, feeds, target)
        seconds["ort-iobinding"] = statistics.median(time_calls(call, sync, **timing))
        device_feeds = to_torch(feeds, target)
        for name, model in models.items():
            seconds[name] = statistics.median(
                time_calls(Cycle(torch_call(name, model, target), device_feeds), sync_torch, **timing))
        tokens = batch * args.seq_len
        row = {"batch": batch, "seq_len": args.seq_len, "median_seconds": seconds,
               "tokens_per_s": {k: tokens / v for k, v in seconds.items()}}
        log.info("batch %4d: %s", batch, {k: round(v) for k, v in row["tokens_per_s"].items()})
        rows.append(row)
    return {"rows": rows}


# --- served pipeline vs the bare session --------------------------------------------------------------------

def served_vs_bare(args: argparse.Namespace, target: Target, artifact: Path, manifest: dict[str, Any]) -> dict:
    """The whole pipeline (HTTP, tokenizing, batching) against the bare session on the same corpus.

    The bare session gets the corpus sorted by length in batches of the server's max batch size, its best case;
    the server gets `--clients` concurrent clients sending `--per-request` sentences each, as users would.
    """
    from bench.bench_serving import http_scenario, length_sorted_encodings, padded_batches
    from bench.corpus import sentences
    from bench.server_process import running_server

    corpus = sentences(args.corpus, seed=7)
    batches = list(padded_batches(length_sorted_encodings(artifact, corpus), args.served_batch))
    session = ort_session(artifact / manifest["graphs"][target.graph]["file"], target)
    run = ort_plain(session)
    for feeds in batches[:3]:
        run(feeds)
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for feeds in batches:
            run(feeds)
        rates.append(len(corpus) / (time.perf_counter() - t0))
    bare = statistics.median(rates)
    del session

    env = {"EMBED_ARTIFACT_DIR": str(artifact), "EMBED_GRAPH_VARIANT": target.graph,
           "EMBED_PROVIDER": target.device, "EMBED_REQUIRE_GPU": str(target.cuda).lower(),
           "EMBED_MAX_BATCH_SIZE": str(args.served_batch),
           "EMBED_MAX_BATCH_TOKENS": str(args.served_batch * manifest["max_seq_length"]),
           "EMBED_BATCH_PADDING_SLACK_TOKENS": "512" if target.cuda else "16",
           "EMBED_MAX_QUEUE_SIZE": str(max(2048, args.clients * args.per_request * 2))}
    requests = max(len(corpus) // args.per_request, args.clients) * 2
    with running_server(env) as (url, _pid):
        served = asyncio.run(http_scenario(url, corpus, concurrency=args.clients, per_request=args.per_request,
                                           requests=requests, max_seconds=args.served_seconds))
    ratio = served["sentences_per_s"] / bare
    log.info("served %.0f sentences/s vs bare session %.0f: %.2f", served["sentences_per_s"], bare, ratio)
    return {"bare_sentences_per_s": bare, "bare_batch": args.served_batch, "served": served, "ratio": ratio,
            "server_env": env}


# --- report -------------------------------------------------------------------------------------------------

def table(report: dict[str, Any]) -> str:
    rows = report["sweep"]["rows"]
    names = list(rows[0]["tokens_per_s"]) if rows else []
    limit = report["limit"]["tokens_per_s"]
    eager = [n for n in names if n.startswith("torch-")]
    head = ["batch × T", *[f"{n} tok/s" for n in names], "iobinding × best eager", "iobinding % of limit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        tps = row["tokens_per_s"]
        best_eager = max(tps[n] for n in eager) if eager else float("nan")
        cells = [f"{row['batch']} × {row['seq_len']}", *[f"{tps[n]:,.0f}" for n in names],
                 f"{tps['ort-iobinding'] / best_eager:.2f}×", f"{100 * tps['ort-iobinding'] / limit:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    env = report["environment"]
    lines.append(f"\n{env.get('gpu', 'CPU')}; onnxruntime {env['onnxruntime']}, torch {env['torch']}; limit "
                 f"{limit:,.0f} tokens/s ({report['limit']['matmul']['flops_per_s'] / 1e12:.1f} TFLOP/s "
                 f"{report['limit']['matmul']['dtype']} matmul, {report['limit']['flops_per_token'] / 1e6:.2f} "
                 f"MFLOP/token at T={rows[0]['seq_len'] if rows else '?'})")
    served = report.get("served")
    if served:
        lines.append(f"served {served['served']['sentences_per_s']:.0f} sentences/s "
                     f"({served['served']['concurrency']} clients × {served['served']['per_request']}) vs bare "
                     f"session {served['bare_sentences_per_s']:.0f} (sorted batches of {served['bare_batch']}): "
                     f"{served['ratio']:.2f}")
    return "\n".join(lines)


def ensure_artifact(model_dir: Path, artifact: Path) -> Path:
    """Export `model_dir` into `artifact` unless an artifact is already there (the machine may lack nothing to
    export, but an artifact made elsewhere is used as it is)."""
    if (artifact / "manifest.json").is_file():
        return artifact
    from export.pipeline import ExportOptions, run_export

    return run_export(ExportOptions(model_dir=model_dir, out_dir=artifact, model_name=model_dir.name))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face BERT directory (PyTorch side)")
    parser.add_argument("--artifact", type=Path, help="artifact directory (default: <out>/artifact, exported)")
    parser.add_argument("--batches", default="1,8,32,128,512,1024", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=5.0, help="cap on timed calls per contender and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-served", action="store_true", help="skip the served-vs-bare comparison")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-request", type=int, default=32)
    parser.add_argument("--served-batch", type=int, default=256)
    parser.add_argument("--served-seconds", type=float, default=30.0)
    parser.add_argument("--corpus", type=int, default=4096, help="sentences in the served corpus (fixed seed)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    target = Target(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    artifact = ensure_artifact(args.model, args.artifact or args.out / "artifact")
    manifest = json.loads((artifact / "manifest.json").read_text())
    report: dict[str, Any] = {"environment": environment(target), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    log.info("environment: %s", report["environment"])
    matmul = matmul_rate(target)
    cfg = manifest["config"]
    per_token = roofline.encoder_flops_per_token(hidden_size=cfg["hidden_size"],
                                                 intermediate_size=cfg["intermediate_size"],
                                                 num_layers=cfg["num_layers"], mean_tokens=args.seq_len)
    report["limit"] = {"matmul": matmul, "flops_per_token": per_token,
                       "tokens_per_s": matmul["flops_per_s"] / per_token}
    report["sweep"] = sweep(args, target, artifact, manifest)
    if not args.no_served:
        report["served"] = served_vs_bare(args, target, artifact, manifest)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"gpu-{args.device}-{stamp}.json").write_text(json.dumps(report, indent=2))
    sys.stdout.write(table(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
