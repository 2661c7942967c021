"""Runs ONNX's backend test cases through Ember and ONNX Runtime; writes docs/ONNX_CONFORMANCE.md.

    python tools/gen_onnx_conformance.py                 # run every case, write the table
    python tools/gen_onnx_conformance.py --refusals      # also rewrite tests/onnx_backend_refusals.py
    python tools/gen_onnx_conformance.py --from-json     # re-render from the last run's results
    python tools/gen_onnx_conformance.py -k resize       # run only cases matching a regex (no writes)
    python tools/gen_onnx_conformance.py --device cuda --no-ort --json build/onnx_cuda.json
                                       # the same cases on the GPU: outcomes and reasons per case,
                                       # grouped by reason (the table stays the CPU's)

The cases are those ``tests/test_onnx_backend.py`` runs: the node cases generated from the
installed ``onnx`` package plus its ``simple``, ``pytorch-converted`` and ``pytorch-operator``
model cases (the ``real`` ones download zoo models and are left out). Each case is built with
``ember.build(model, BuildConfig(device="cpu"))`` through ``ember.onnx_backend`` and its outputs
are compared with the case's reference outputs exactly as ``onnx.backend.test`` does (the case's
rtol/atol); ONNX Runtime's CPU provider runs the same inputs against the same comparison.

Outcomes: ``pass``; ``refused`` (an ``EmberError`` at build or run time: the reason is its
message); ``wrong`` (ran, outputs differ); ``crash`` (any other exception); ``hang`` (over the
time limit); ``excluded`` (out of scope, ``tests/onnx_backend_exclusions.py``, not run).
``--refusals`` writes the refused cases as the test suite's expected refusals (xfail, strict).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import glob
import io
import json
import os
import platform
import re
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

DOC = ROOT / "docs" / "ONNX_CONFORMANCE.md"
REFUSALS = ROOT / "tests" / "onnx_backend_refusals.py"
RESULTS = ROOT / "build" / "onnx_conformance.json"
KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator")
TIME_LIMIT_S = 120


@dataclass
class Case:
    name: str
    kind: str
    op: str  # the op under test (node cases) or the kind (model cases)
    rtol: float
    atol: float
    load: Callable[[], tuple[Any, list[tuple[list[Any], list[Any]]]]] = field(repr=False)


@dataclass
class Result:
    name: str
    kind: str
    op: str
    ember: str
    reason: str
    seconds: float
    ort: str
    ort_reason: str


def _tensor_list(files: list[str], types: list[Any]) -> list[Any]:
    from onnx.backend.test.runner import Runner

    out: list[Any] = []
    for f, t in zip(files, types):
        Runner._load_proto(None, f, out, t)  # type: ignore[arg-type]  # self is unused
    return out


def _model_loader(model_dir: str) -> Callable[[], tuple[Any, list[tuple[list[Any], list[Any]]]]]:
    def load() -> tuple[Any, list[tuple[list[Any], list[Any]]]]:
        import onnx

        model = onnx.load(os.path.join(model_dir, "model.onnx"))
        sets = []
        for d in sorted(glob.glob(os.path.join(model_dir, "test_data_set*"))):
            n_in = len(glob.glob(os.path.join(d, "input_*.pb")))
            n_out = len(glob.glob(os.path.join(d, "output_*.pb")))
            inputs = _tensor_list([os.path.join(d, f"input_{i}.pb") for i in range(n_in)],
                                  [model.graph.input[i].type for i in range(n_in)])
            outputs = _tensor_list([os.path.join(d, f"output_{i}.pb") for i in range(n_out)],
                                   [model.graph.output[i].type for i in range(n_out)])
            sets.append((inputs, outputs))
        return model, sets

    return load


def _node_loader(tc: Any) -> Callable[[], tuple[Any, list[tuple[list[Any], list[Any]]]]]:
    def load() -> tuple[Any, list[tuple[list[Any], list[Any]]]]:
        from onnx.backend.test.runner import _normalize_tensor

        sets = [([_normalize_tensor(x) for x in i], [_normalize_tensor(x) for x in o]) for i, o in tc.data_sets]
        return tc.model, sets

    return load


def op_under_test(model: Any) -> str:
    """The op a node case tests: its one node's op, or for a function-body (``_expanded``) case
    the op the body stands for (read from the case's name by the caller)."""
    ops = [n.op_type for n in model.graph.node]
    return ops[0] if len(ops) == 1 else ""


def cases(pattern: Optional[str] = None) -> list[Case]:
    """Every case of the suite, in name order (``pattern``: a regex the names must match)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from onnx.backend.test.loader import load_model_tests

        found = {k: load_model_tests(kind=k) for k in KINDS}
    by_name: dict[str, str] = {}
    for tc in found["node"]:
        op = op_under_test(tc.model)
        if op:
            by_name[tc.name] = op
    out = []
    for kind, tcs in found.items():
        for tc in tcs:
            if pattern and not re.search(pattern, tc.name):
                continue
            if kind == "node":
                op = by_name.get(tc.name) or _expanded_op(tc.name, by_name) or _main_op(tc.model)
                load = _node_loader(tc)
            else:
                op = f"({kind} models)"
                load = _model_loader(tc.model_dir)
            out.append(Case(tc.name, kind, op, tc.rtol, tc.atol, load))
    return sorted(out, key=lambda c: c.name)


def _expanded_op(name: str, by_name: dict[str, str]) -> str:
    for suffix in ("_expanded_ver18", "_expanded"):
        if name.endswith(suffix) and name[: -len(suffix)] in by_name:
            return by_name[name[: -len(suffix)]]
    return ""


def _main_op(model: Any) -> str:
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return counts.most_common(1)[0][0] if counts else "?"


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _first_line(msg: str, limit: int = 300) -> str:
    msg = " ".join(line.strip() for line in msg.strip().splitlines()[:3])
    msg = re.sub(r" ?Ember supports: .*", "", msg).replace("<onnx.ModelProto> ", "")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def compare(case: Case, refs: list[Any], outs: list[Any]) -> None:
    from onnx.backend.test.runner import Runner

    Runner.assert_similar_outputs(refs, list(outs), rtol=case.rtol, atol=case.atol)


def run_ember(case: Case, model: Any, sets: list[Any], device: str = "CPU") -> tuple[str, str]:
    from ember.errors import EmberError
    from ember.onnx_backend import EmberBackend

    try:
        with _time_limit(TIME_LIMIT_S), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = EmberBackend.prepare(model, device)
            try:
                for inputs, refs in sets:
                    outs = rep.run(inputs)
                    compare(case, refs, list(outs))
            finally:
                rep.close()
    except _Timeout:
        return "hang", f"over {TIME_LIMIT_S} s"
    except EmberError as e:
        return "refused", f"{type(e).__name__}: {_first_line(str(e))}"
    except AssertionError as e:
        return "wrong", _first_line(str(e))
    except Exception as e:  # noqa: BLE001  (the point is to catch what Ember did not mean to raise)
        return "crash", f"{type(e).__name__}: {_first_line(str(e))}"
    return "pass", ""


def run_ort(case: Case, model: Any, sets: list[Any]) -> tuple[str, str]:
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for inputs, refs in sets:
            outs = sess.run(None, dict(zip(names, inputs)))
            compare(case, refs, outs)
    except AssertionError as e:
        return "wrong", _first_line(str(e))
    except Exception as e:  # noqa: BLE001
        return "fail", f"{type(e).__name__}: {_first_line(str(e), 150)}"
    return "pass", ""


def run_all(selected: list[Case], with_ort: bool = True, progress: bool = True,
            device: str = "CPU") -> list[Result]:
    from onnx_backend_exclusions import exclusion_reason

    results = []
    for i, case in enumerate(selected):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, sets = case.load()
        except Exception as e:  # noqa: BLE001
            results.append(Result(case.name, case.kind, case.op, "crash", f"cannot load: {e}", 0.0, "fail", ""))
            continue
        ort_outcome, ort_reason = run_ort(case, model, sets) if with_ort else ("?", "")
        excluded = exclusion_reason(case.name)
        t0 = time.perf_counter()
        if excluded:
            outcome, reason = "excluded", excluded
        else:
            # a case stuck inside native code never sees the SIGALRM: print where it is stuck
            faulthandler.dump_traceback_later(TIME_LIMIT_S + 15)
            try:
                outcome, reason = run_ember(case, model, sets, device)
            finally:
                faulthandler.cancel_dump_traceback_later()
        dt = time.perf_counter() - t0
        results.append(Result(case.name, case.kind, case.op, outcome, reason, dt, ort_outcome, ort_reason))
        if progress:
            print(f"[{i + 1}/{len(selected)}] {case.name}: {outcome} ({dt:.2f}s) ort={ort_outcome}"
                  + (f"  {reason[:160]}" if outcome not in ("pass", "excluded") else ""), flush=True)
    return results


# ---- rendering --------------------------------------------------------------------------------

def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"


def _reason_key(reason: str) -> str:
    """A refusal's reason without node names and counts, so that equal reasons group."""
    r = re.sub(r"^\w+Error: ", "", reason)
    r = re.sub(r" ?Ember supports: .*", "", r)
    r = re.sub(r"<onnx\.ModelProto>:? ?(\(opset \d+\))?:? ?", "", r)
    r = re.sub(r"node '[^']*' ", "", r)
    r = re.sub(r"'[^']*'", "'…'", r)
    r = re.sub(r"\[[^\]]*\]", "[…]", r)
    r = re.sub(r"\s+", " ", r).strip(" :")
    return r[:200]


def render(results: list[Result]) -> str:
    import onnx
    import onnxruntime

    import ember

    total = collections.Counter(r.ember for r in results)
    ort_pass = [r for r in results if r.ort == "pass"]
    both = sum(1 for r in ort_pass if r.ember == "pass")
    in_scope = [r for r in ort_pass if r.ember != "excluded"]
    n = len(results)
    lines = [
        "# ONNX conformance: ONNX's backend test suite",
        "",
        "<!-- generated by `python tools/gen_onnx_conformance.py`; do not edit -->",
        "",
        f"Ember {ember.__version__} on the CPU (`ember.build(model, BuildConfig(device=\"cpu\"))` through "
        f"`ember.onnx_backend`), onnx {onnx.__version__}, ONNX Runtime {onnxruntime.__version__} (CPU "
        f"provider) on the same inputs and the same comparison (each case's rtol/atol); "
        f"{platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        "Cases: the node cases generated from the installed `onnx` package plus its `simple`, "
        "`pytorch-converted` and `pytorch-operator` model cases (`real` ones download zoo models: "
        "not run). `tests/test_onnx_backend.py` runs the same cases in CI: exclusions are skipped with "
        "their reason (`tests/onnx_backend_exclusions.py`), refusals are expected failures "
        "(`tests/onnx_backend_refusals.py`, strict: a case that starts passing fails the suite until "
        "it is taken off the list).",
        "",
        "## Totals",
        "",
        "| | cases | Ember passes | ONNX Runtime passes | Ember passes of ORT's | share |",
        "|---|---|---|---|---|---|",
    ]
    for kind in (*KINDS, None):
        sel = [r for r in results if kind is None or r.kind == kind]
        op = [r for r in sel if r.ort == "pass"]
        e = sum(1 for r in sel if r.ember == "pass")
        b = sum(1 for r in op if r.ember == "pass")
        label = f"`{kind}`" if kind else "**all**"
        lines.append(f"| {label} | {len(sel)} | {e} | {len(op)} | {b} | {_pct(b, len(op))} |")
    lines += [
        "",
        "Ember's outcomes over all " + str(n) + " cases: "
        + ", ".join(f"{k} {total[k]}" for k in ("pass", "refused", "excluded", "wrong", "crash", "hang")) + ".",
        f"Of the {len(ort_pass)} cases ONNX Runtime passes, Ember passes {both} ({_pct(both, len(ort_pass))}); "
        f"of the {len(in_scope)} of them in scope (not excluded), {both} ({_pct(both, len(in_scope))}).",
        "",
    ]
    bad = [r for r in results if r.ember in ("wrong", "crash", "hang")]
    if bad:
        lines += ["## Wrong results, crashes, hangs", "", "| case | outcome | what |", "|---|---|---|"]
        lines += [f"| {r.name} | {r.ember} | {_md(NOTES.get(r.name, r.reason))} |" for r in bad]
        lines.append("")
    lines += _refusal_summary(results)
    lines += ["## Per op", "",
              "Node cases grouped by the op they test (a function-body `_expanded` case counts for its "
              "op). ORT: cases ONNX Runtime passes.", "",
              "| op | cases | ORT | pass | refused | excluded | wrong/crash | why not |",
              "|---|---|---|---|---|---|---|---|"]
    by_op: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_op[r.op].append(r)
    for op in sorted(by_op, key=lambda s: (s.startswith("("), s.lower())):
        rs = by_op[op]
        c = collections.Counter(r.ember for r in rs)
        o = sum(1 for r in rs if r.ort == "pass")
        why = collections.Counter(_reason_key(r.reason) for r in rs if r.ember not in ("pass",))
        why_text = "; ".join(f"{w} (×{k})" if k > 1 else w for w, k in why.most_common(3))
        lines.append(f"| {op} | {len(rs)} | {o} | {c['pass']} | {c['refused']} | {c['excluded']} | "
                     f"{c['wrong'] + c['crash'] + c['hang']} | {_md(why_text)} |")
    lines.append("")
    return "\n".join(lines)


def _refusal_summary(results: list[Result]) -> list[str]:
    refused = [r for r in results if r.ember == "refused"]
    if not refused:
        return []
    groups: dict[str, list[Result]] = collections.defaultdict(list)
    for r in refused:
        groups[_reason_key(r.reason)].append(r)
    lines = ["## Why Ember refuses", "", "Refusals grouped by reason, most cases first (ORT: how many of "
             "them ONNX Runtime passes).", "", "| cases | ORT | reason | examples |", "|---|---|---|---|"]
    for why, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        ex = ", ".join(r.name for r in rs[:3]) + (", …" if len(rs) > 3 else "")
        lines.append(f"| {len(rs)} | {sum(1 for r in rs if r.ort == 'pass')} | {_md(why)} | {ex} |")
    lines.append("")
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


#: What is known of the cases that give a wrong result (shown instead of the bare mismatch).
NOTES: dict[str, str] = {}


def write_refusals(results: list[Result]) -> None:
    """``tests/onnx_backend_refusals.py``: each refused, wrong or crashing case with its reason."""
    lines = [
        "# ruff: noqa: E501  (generated: one case per line, its reason as Ember gave it)",
        '"""Cases of ONNX\'s backend test suite that Ember does not pass yet, with the reason: the',
        "suite expects them to fail (strict xfail), so a case that starts passing is noticed.",
        "",
        "Generated by `python tools/gen_onnx_conformance.py --refusals`; do not edit by hand.",
        "REFUSED: Ember refuses (an EmberError saying what it does not support). FAILING: known wrong",
        'results or crashes, to be fixed first (there should be none)."""',
        "",
        "REFUSED: dict[str, str] = {",
    ]
    lines += [f"    {r.name!r}: {r.reason!r}," for r in results if r.ember == "refused"]
    lines += ["}", "", "FAILING: dict[str, str] = {"]
    lines += [f"    {r.name!r}: {(r.ember + ': ' + NOTES.get(r.name, r.reason))!r}," for r in results
              if r.ember in ("wrong", "crash", "hang")]
    lines += ["}", ""]
    REFUSALS.write_text("\n".join(lines))


def _case_names(text: str) -> list[str]:
    """Case names in ``text``: one per line, bare or as pytest reports them."""
    names = []
    for line in text.splitlines():
        found = re.findall(r"\btest_\w+", line)
        if found:
            names.append(re.sub(r"_(cpu|cuda)$", "", found[-1]))
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", help="run only the cases whose name matches this regex (writes nothing)")
    ap.add_argument("--from-json", action="store_true", help=f"render from {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--refusals", action="store_true", help=f"rewrite {REFUSALS.relative_to(ROOT)}")
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime (with -k)")
    ap.add_argument("-q", action="store_true", help="no per-case progress lines")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where Ember runs the cases; cuda writes only --json and a summary by reason")
    ap.add_argument("--json", type=Path, help="also write the per-case results to this file")
    ap.add_argument("--names", type=Path,
                    help="run only the cases named in this file (writes nothing but --json): a name per "
                         "line, or pytest's FAILED lines (their _cpu/_cuda suffix is dropped)")
    ap.add_argument("--skip", help="leave out the cases whose name matches this regex (e.g. one that hangs)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.from_json:
        results = [Result(**r) for r in json.loads(RESULTS.read_text())]
    else:
        selected = cases(args.k)
        if args.names:
            wanted = set(_case_names(args.names.read_text()))
            selected = [c for c in selected if c.name in wanted]
        if args.skip:
            selected = [c for c in selected if not re.search(args.skip, c.name)]
        t0 = time.perf_counter()
        results = run_all(selected, with_ort=not args.no_ort, progress=not args.q, device=args.device.upper())
        print(f"{len(results)} cases in {time.perf_counter() - t0:.0f} s: "
              + ", ".join(f"{k} {v}" for k, v in collections.Counter(r.ember for r in results).items()))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=0))
            print(f"wrote {args.json}")
        if args.device != "cpu":
            by_reason = collections.Counter(_reason_key(r.reason) for r in results
                                            if r.ember not in ("pass", "excluded"))
            for reason, n in by_reason.most_common():
                print(f"{n:5d}  {reason}")
            return
        if args.k or args.names:
            return
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps([asdict(r) for r in results], indent=0))
    DOC.write_text(render(results))
    print(f"wrote {DOC.relative_to(ROOT)}")
    if args.refusals:
        write_refusals(results)
        print(f"wrote {REFUSALS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
