"""Numbers and case figures of the README and the model cards, written from run outputs (never copied by hand).

Usage::

    # demo runs over several cohort seeds -> docs/results/demo.json, docs/images/demo_case_figure_{HGG,LGG}.png
    python docs/write_numbers.py demo /tmp/demo_s0/demo /tmp/demo_s1/demo /tmp/demo_s2/demo \\
        --command "python -m monai_protoshare.workflows.demo --seed S --output_dir /tmp/demo_sS/demo" \\
        --threads 1 --figure_seed 0
    python docs/write_numbers.py demo outputs/demo_seeds/seed*     # a `demo --seeds 0 1 2` run
    # a Table-1 folder (table1.csv) and a segmentation table folder (seg_table.csv)
    python docs/write_numbers.py table1 outputs/cv --command "python -m monai_protoshare.workflows.crossval ..." \\
        --wall_s 12345
    python docs/write_numbers.py seg outputs/seg_cv --command "..."
    # rewrite every marked block from the committed records only
    python docs/write_numbers.py render

Each collecting step writes a small record under ``docs/results/`` (``demo.json``, ``table1.json``,
``seg_table.json``: the values of every run, their mean and sample sd, the command that produced them, the commit
of the runs, the machine, the date) and then renders: every block between ``<!-- numbers:NAME -->`` and
``<!-- /numbers:NAME -->`` in ``README.md`` and ``bundles/*/docs/README.md`` is replaced by the block ``NAME``
rendered from the records (``demo``: the per-seed table with mean ± sample sd; ``demo_figures``: the case figures;
``table1``, ``seg``: the tables). Re-running a step refreshes everything; rendering twice gives the same text.

A demo run folder holds ``demo_summary.json`` and ``fold<k>/metrics.json`` (and ``fold<k>/run_info.json``, whose
command and commit are recorded); its cohort seed is read from the summary or from the cohort's
``synthetic_cohort.json``. The machine is the summary's (``monai_protoshare.workflows.demo.machine_info``); runs
written before the summary recorded it get this machine's CPU model with ``--threads`` (then required). The case
figures are the chosen seed's ``evidence/<case>/case_figure.png`` (rendered by
``monai_protoshare.explain.figures.case_figure`` in the evidence export), the first case of each grade.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import yaml

from monai_protoshare.io import write_json, write_text
from monai_protoshare.workflows.demo import describe_machine, format_statistic, machine_info, value_statistics
from monai_protoshare.workflows.run_info import git_sha

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path("docs") / "results"
IMAGES = Path("docs") / "images"
GRADES = ("HGG", "LGG")
#: per-run values of a demo record: name, how to read it from metrics.json, table label, format
DEMO_VALUES = (
    ("bac", lambda m: m.get("bac"), "BAC", "{:.3f}"),
    ("ap", lambda m: m.get("ap"), "AP", "{:.3f}"),
    ("ap_eq28", lambda m: (m.get("ap_by_class_map") or {}).get("eq28"), "AP `eq28`", "{:.3f}"),
    ("ap_eq12", lambda m: (m.get("ap_by_class_map") or {}).get("eq12"), "AP `eq12`", "{:.3f}"),
    ("ids", lambda m: m.get("ids"), "IDS (%)", "{:.2f}"),
    ("ids_peer", lambda m: m.get("ids_peer"), "IDS peer (%)", "{:.2f}"),
)
MARKER = re.compile(r"(<!-- numbers:(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /numbers:(?P=name) -->)", re.S)

logger = logging.getLogger("write_numbers")


# ------------------------------------------------------------------ records


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"write_numbers: '{path}' not found.")
    return json.loads(path.read_text())


def _machine(recorded: dict | None, threads: int | None) -> dict:
    """The run's recorded machine, else this machine's with ``threads``."""
    if recorded:
        return recorded
    if threads is None:
        raise SystemExit("write_numbers: the runs do not record their thread count; pass --threads.")
    return {**machine_info(), "threads": threads, "recorded": "CPU read by write_numbers on the machine of the runs"}


def _command(run_info: dict, module: str) -> str:
    """``python -m <module> <args>`` of a recorded ``sys.argv``."""
    return " ".join(["python", "-m", module, *run_info.get("command", [])[1:]])


def demo_record(
    run_dirs: Sequence[Path], command: str | None, threads: int | None, figure_seed: int | None, note: str | None = None
) -> dict:
    """The record of demo runs (one folder per cohort seed): values, mean and sample sd, provenance, figures."""
    runs, machines = [], []
    for run_dir in run_dirs:
        summary = _read_json(run_dir / "demo_summary.json")
        fold_dir = run_dir / f"fold{summary['fold']}"
        metrics = _read_json(fold_dir / "metrics.json")
        info = _read_json(fold_dir / "run_info.json")
        config = (
            yaml.safe_load((fold_dir / "run_config.yaml").read_text())
            if (fold_dir / "run_config.yaml").is_file()
            else {}
        )
        cohort = summary.get("cohort") or _read_json(Path(summary["dataset_dir"]) / "synthetic_cohort.json")
        runs.append(
            {
                "seed": cohort["seed"],
                "cohort_version": cohort["version"],
                "n_cases": cohort["n_cases"],
                "dir": str(run_dir),
                "command": _command(info, "monai_protoshare.workflows.demo"),
                "commit": info.get("git_sha"),
                "date_utc": info.get("time_utc"),
                "training_seed": config.get("seed"),
                "values": {name: read(metrics) for name, read, _, _ in DEMO_VALUES},
                "n_held_out": metrics.get("n"),
                "class_map": metrics.get("class_map"),
                "wall_min": summary["timings"]["total_s"] / 60,
                "setting": {k: summary[k] for k in ("bundle", "preset", "fold")},
                "evidence": summary["outputs"]["evidence"],
            }
        )
        machines.append(summary.get("machine"))
    settings = {
        json.dumps({**r["setting"], "cohort_version": r["cohort_version"], "n_cases": r["n_cases"]}) for r in runs
    }
    if len(settings) != 1:
        raise SystemExit(f"write_numbers: the runs differ in bundle, preset, fold or cohort: {sorted(settings)}.")
    if len({r["seed"] for r in runs}) != len(runs):
        raise SystemExit("write_numbers: two runs have the same cohort seed.")
    statistics = {
        name: value_statistics([r["values"][name] for r in runs if r["values"][name] is not None])
        for name, *_ in DEMO_VALUES
    }
    statistics["wall_min"] = value_statistics([r["wall_min"] for r in runs])
    record = {
        "kind": "demo",
        "setting": json.loads(settings.pop()),
        "command": command or "; ".join(dict.fromkeys(r["command"] for r in runs)),
        "commits": sorted({str(r["commit"]) for r in runs}),
        "machine": _machine(machines[0], threads),
        "dates_utc": sorted(r["date_utc"] for r in runs if r["date_utc"]),
        "runs": [{k: v for k, v in r.items() if k not in ("setting", "evidence")} for r in runs],
        "statistics": statistics,
        "sd": "sample sd (ddof 1) over the cohort seeds",
        "note": note,
        "written_by": "python docs/write_numbers.py " + shlex.join(sys.argv[1:]),
        "written_at_commit": git_sha(),
        "written_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if len({json.dumps(m, sort_keys=True) for m in machines}) > 1:
        record["machines"] = machines
    seed = runs[0]["seed"] if figure_seed is None else figure_seed
    chosen = [r for r in runs if r["seed"] == seed]
    if not chosen:
        raise SystemExit(f"write_numbers: --figure_seed {seed} is not among the runs' seeds.")
    record["figures"] = {"seed": seed, "cases": _figure_cases(chosen[0]["evidence"])}
    return record


def _figure_cases(evidence_dirs: Sequence[str]) -> dict:
    """The first evidence folder of each grade: its case, label, prediction and ``case_figure.png``."""
    cases = {}
    for folder in map(Path, evidence_dirs):
        report = _read_json(folder / "report.json")
        if report["label"] in GRADES and report["label"] not in cases and (folder / "case_figure.png").is_file():
            cases[report["label"]] = {
                "case": report["subject_id"],
                "label": report["label"],
                "prediction": report["prediction"],
                "source": str(folder / "case_figure.png"),
                "image": str(IMAGES / f"demo_case_figure_{report['label']}.png"),
            }
    if missing := [g for g in GRADES if g not in cases]:
        raise SystemExit(f"write_numbers: no case figure of grade {missing} in {list(evidence_dirs)}.")
    return cases


def table_record(
    kind: str,
    root: Path,
    csv_name: str,
    module: str,
    command: str | None,
    wall_s: float | None,
    threads: int | None,
    note: str | None,
) -> dict:
    """The record of a table folder (``table1.csv`` or ``seg_table.csv``) and its ``run_info.json`` (written by
    ``python -m <module>``)."""
    if not (root / csv_name).is_file():
        raise SystemExit(f"write_numbers: '{root / csv_name}' not found.")
    with open(root / csv_name, newline="") as f:
        header, *rows = list(csv.reader(f))
    info = json.loads((root / "run_info.json").read_text()) if (root / "run_info.json").is_file() else {}
    # the sections of the table's markdown after the first one (the seg table's pruning curves), verbatim
    markdown = root / csv_name.replace(".csv", ".md")
    sections = ("\n" + markdown.read_text()).split("\n## ")[2:] if markdown.is_file() else []
    wall = root / "crossval_wall.json"  # the cross-validation runner's wall time and threads per fold
    if wall.is_file():
        recorded = json.loads(wall.read_text())
        wall_s = recorded["wall_s"] if wall_s is None else wall_s
        threads = recorded.get("threads") if threads is None else threads
    return {
        "kind": kind,
        "source": str(root / csv_name),
        "command": command or (_command(info, module) if "command" in info else "not recorded"),
        "commits": [str(info.get("git_sha"))],
        "machine": _machine(None, threads),
        "dates_utc": [info.get("time_utc")],
        "wall_s": wall_s,
        "header": header,
        "rows": rows,
        "extra_markdown": "\n".join(
            f"**{section.splitlines()[0]}**\n" + "\n".join(section.splitlines()[1:]) for section in sections
        ),
        "sd": "population sd (ddof 0) over folds, as MProtoNet reports",
        "note": note,
        "written_by": "python docs/write_numbers.py " + shlex.join(sys.argv[1:]),
        "written_at_commit": git_sha(),
    }


# ------------------------------------------------------------------ rendering


def _short_commit(sha: str) -> str:
    """```764753a-dirty``` for a full SHA with ``-dirty``."""
    return f"`{sha[:7]}{'-dirty' if sha.endswith('-dirty') else ''}`"


def _provenance(record: dict) -> str:
    dates = sorted({d[:10] for d in record["dates_utc"] if d})
    return (
        f"Machine: {describe_machine(record['machine'])}. Commit of the runs: "
        f"{', '.join(_short_commit(c) for c in record['commits'])}; run {', '.join(dates)}."
        + (f" {record['note']}" if record.get("note") else "")
    )


def _one_or_all(values) -> str:
    """``"0"`` for equal values, ``"0, 1"`` otherwise."""
    return ", ".join(dict.fromkeys(str(v) for v in values))


def render_demo(record: dict, path: Path) -> str:
    """The per-seed table, the mean ± sample sd row, the commands and the machine."""
    s, stats = record["setting"], record["statistics"]
    class_map = _one_or_all(r.get("class_map") for r in record["runs"])
    labels = [
        f"AP (`{class_map}`)" if name == "ap" and class_map != "None" else label for name, _, label, _ in DEMO_VALUES
    ]
    header = ["cohort seed", *labels, "wall (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in record["runs"]:
        cells = ["" if run["values"][n] is None else fmt.format(run["values"][n]) for n, _, _, fmt in DEMO_VALUES]
        lines.append(f"| {run['seed']} | " + " | ".join(cells) + f" | {run['wall_min']:.1f} |")
    means = [format_statistic(stats[n], fmt) for n, _, _, fmt in DEMO_VALUES]
    lines.append("| **mean ± sd** | " + " | ".join(means) + f" | {format_statistic(stats['wall_min'], '{:.1f}')} |")
    return "\n".join(
        [
            *lines,
            "",
            f"{s['bundle']}, preset `{s['preset']}`, fold {s['fold']} ({record['runs'][0]['n_held_out']} held-out "
            f"cases) of the synthetic cohort version {s['cohort_version']} ({s['n_cases']} cases), one cohort "
            f"(and split) per seed, training seed {_one_or_all(r['training_seed'] for r in record['runs'])}; mean ± sample sd (ddof 1) over the seeds. Produced by "
            f"`{record['command']}`; recorded in `docs/results/demo.json` and written here by `python docs/write_numbers.py "
            "demo` (its full command is in the record). " + _provenance(record),
        ]
    )


def render_demo_figures(record: dict, path: Path) -> str:
    """The case figures' table, with image paths relative to ``path`` (the file written, relative to the repo)."""
    figures = record["figures"]
    cases = figures["cases"]
    head = " | ".join(f"{g} ({cases[g]['case']}, predicted {cases[g]['prediction']})" for g in GRADES)
    cells = " | ".join(f"![{g} case figure]({os.path.relpath(REPO / cases[g]['image'], path.parent)})" for g in GRADES)
    return "\n".join(
        [
            f"Case figures of the cohort-seed-{figures['seed']} run above (synthetic cohort version "
            f"{record['setting']['cohort_version']}; its `evidence/<case>/case_figure.png`, copied by "
            "`docs/write_numbers.py`):",
            "",
            f"| {head} |",
            "|---|---|",
            f"| {cells} |",
        ]
    )


def render_table(record: dict, path: Path) -> str:
    """A table record as markdown, with its command, wall time and machine."""
    lines = ["| " + " | ".join(record["header"]) + " |", "|" + "---|" * len(record["header"])]
    lines += ["| " + " | ".join(row) + " |" for row in record["rows"]]
    wall = "" if record.get("wall_s") is None else f" in {record['wall_s'] / 3600:.1f} h"
    return "\n".join(
        [
            *lines,
            *(["", *record["extra_markdown"].strip().splitlines()] if record.get("extra_markdown") else []),
            "",
            f"Mean ± {record['sd']}. Produced by `{record['command']}`{wall}; recorded in "
            f"`docs/results/{record['kind']}.json` and written here by `python docs/write_numbers.py "
            f"{next(step for step, t in TABLES.items() if t[0] == record['kind'])}` (its full command is in the record). "
            + _provenance(record),
        ]
    )


#: table step -> (record name, csv file, module that wrote it)
TABLES = {
    "table1": ("table1", "table1.csv", "monai_protoshare.workflows.crossval"),
    "seg": ("seg_table", "seg_table.csv", "monai_protoshare.workflows.seg_table"),
}
#: block name -> (record file, renderer)
BLOCKS = {
    "demo": ("demo.json", render_demo),
    "demo_figures": ("demo.json", render_demo_figures),
    "table1": ("table1.json", render_table),
    "seg": ("seg_table.json", render_table),
}


def render_file(path: Path, repo: Path) -> bool:
    """Rewrite the marked blocks of ``path`` (in ``repo``) whose record exists; True when the file changed."""
    results = repo / RESULTS
    text = path.read_text()

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"write_numbers: {path}: unknown block 'numbers:{name}' (known: {sorted(BLOCKS)}).")
        file, renderer = BLOCKS[name]
        if not (results / file).is_file():
            logger.warning("%s: block %s left as it is: no %s", path, name, results / file)
            return match[0]
        body = renderer(json.loads((results / file).read_text()), path.relative_to(repo))
        return f"{match[1]}{body}\n{match[4]}"

    new = MARKER.sub(replace, text)
    if text.count("<!-- numbers:") != len(MARKER.findall(text)):
        raise SystemExit(f"write_numbers: {path}: a '<!-- numbers:NAME -->' without its '<!-- /numbers:NAME -->'.")
    if new != text:
        write_text(path, new)
    return new != text


def render_all(repo: Path = REPO) -> list[Path]:
    """Render every marked block of the README and the model cards; returns the files that changed."""
    files = [repo / "README.md", *sorted((repo / "bundles").glob("*/docs/README.md"))]
    return [f for f in files if f.is_file() and render_file(f, repo)]


def copy_figures(record: dict, repo: Path = REPO) -> None:
    """Copy the record's case figures into ``docs/images/``."""
    for case in record["figures"]["cases"].values():
        shutil.copyfile(case["source"], repo / case["image"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=REPO, help="repository to write into (tests)")
    sub = parser.add_subparsers(dest="step", required=True)
    demo = sub.add_parser("demo", help="demo run folders, one per cohort seed")
    demo.add_argument("runs", nargs="+", type=Path)
    demo.add_argument("--figure_seed", type=int, help="cohort seed whose case figures are shown (default: first)")
    for name, help_text in (("table1", "a Table-1 folder (table1.csv)"), ("seg", "a seg table folder")):
        table = sub.add_parser(name, help=help_text)
        table.add_argument("root", type=Path)
        table.add_argument("--wall_s", type=float, help="wall time of the whole run, seconds (default: recorded)")
    for step in (demo, sub.choices["table1"], sub.choices["seg"]):
        step.add_argument("--command", help="the command that produced the runs (default: from run_info.json)")
        step.add_argument("--threads", type=int, help="threads of each run, when the runs do not record it")
        step.add_argument("--note", help="a sentence on how the runs were made (e.g. three at once), shown with them")
    sub.add_parser("render", help="rewrite the marked blocks from docs/results/ only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = args.repo / RESULTS
    if args.step == "demo":
        record = demo_record(args.runs, args.command, args.threads, args.figure_seed, args.note)
        copy_figures(record, args.repo)
        write_json(results / "demo.json", record)
    elif args.step in TABLES:
        kind, csv_name, module = TABLES[args.step]
        record = table_record(kind, args.root, csv_name, module, args.command, args.wall_s, args.threads, args.note)
        write_json(results / f"{kind}.json", record)
    for changed in render_all(args.repo):
        logger.info("rewrote %s", changed)


if __name__ == "__main__":
    main()
