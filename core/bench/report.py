"""Show and keep a bench report: a rich table, results.json, a markdown table and chart.png.

Every speed is printed beside the loss it reached: a fast system with a wrong loss is a bug,
not a result (a compiled Liger kernel path was seen returning 69.9 instead of 12.18, docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GIB = 2**30

COLUMNS = (
    "system",
    "status",
    "tokens/s",
    "steps/s",
    "× hf-ref",
    "× hf-compile",
    "MFU",
    "peak GiB",
    "warm-up s",
    "loss",
)
SCALING_COLUMNS = ("devices", "tokens/s per device", "scaling eff.")
# Real-length mode (--lengths): target tokens per second, pad excluded, and the share of pad.
LENGTH_COLUMNS = ("real tokens/s", "pad %")


def _real_length(report: dict[str, Any]) -> bool:
    return bool(report["settings"].get("lengths"))


def columns(report: dict[str, Any]) -> tuple[str, ...]:
    cols = COLUMNS[:3] + LENGTH_COLUMNS + COLUMNS[3:] if _real_length(report) else COLUMNS
    return cols[:1] + SCALING_COLUMNS + cols[1:] if report.get("scaling") else cols


def _fmt(x: Any, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    scaling = bool(report.get("scaling"))
    n_columns = len(columns(report)) - (len(SCALING_COLUMNS) if scaling else 0)
    for r in report["systems"]:
        extra: tuple[str, ...] = ()
        if scaling:
            eff = r.get("scaling_efficiency")
            extra = (str(r.get("devices", 1)), _fmt(r.get("tokens_per_s_per_device"), ",.0f"), _fmt(eff, ".1%"))
        if r["status"] != "ok":
            out.append((r["system"], *extra, r["status"], *(["–"] * (n_columns - 3)), r.get("error", "")[:80]))
            continue
        peak = r.get("peak_memory_bytes")
        peak_s = _fmt(peak / GIB if peak else None, ".1f") + (
            "*" if peak and r.get("peak_memory_includes_warmup") else ""
        )
        out.append(
            (
                r["system"],
                *extra,
                "ok",
                _fmt(r["tokens_per_s"], ",.0f"),
                *(
                    (_fmt(r.get("target_tokens_per_s"), ",.0f"), _fmt(r.get("padding_fraction"), ".0%"))
                    if _real_length(report)
                    else ()
                ),
                _fmt(r["steps_per_s"], ".3f"),
                _fmt(r.get("ratio_to_hf_reference"), ".2f"),
                _fmt(r.get("ratio_to_hf_compile"), ".2f"),
                _fmt(r.get("mfu"), ".1%"),
                peak_s,
                _warmup(r),
                _fmt(r["loss"], ".4f"),
            )
        )
    return out


def _warmup(r: dict[str, Any]) -> str:
    """Warm-up seconds; with a second, warm-cache run of a compiled system: "cold / warm"."""
    cold = _fmt(r["warmup_s"], ".1f")
    warm = r.get("warmup_warm_s")
    return cold if warm is None else f"{cold} / {warm:.1f}"


def _title(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    where = m.get("gpu") or "CPU"
    scaling = report.get("scaling")
    batch = f"batch {s['batch_size']} per device ({scaling['mesh']} mesh)" if scaling else f"batch {s['batch_size']}"
    return (
        f"{report['model']['name']} on {where}, {s['precision']}, {batch} × seq {s['seq_len']}, "
        f"accumulation {s['accumulation_steps']}, r {s['lora_r']}, dropout {s['lora_dropout']} "
        f"({s.get('dropout_masks', 'framework')} masks), gradient checkpointing {s.get('gradient_checkpointing', 'off')}, "
        f"{s['steps']} timed steps after {s['warmup_steps']} warm-up"
        + (f"; real lengths {s['lengths']} (backends packed, hf padded per micro-batch)" if s.get("lengths") else "")
    )


def notes(report: dict[str, Any]) -> list[str]:
    out = list(report["problems"])
    if any(r.get("peak_memory_includes_warmup") for r in report["systems"]):
        out.append("(*) peak memory read from JAX, which cannot reset its peak: includes loading and warm-up")
    return out


def print_table(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=_title(report))
    for c in columns(report):
        table.add_column(c, justify="left" if c in ("system", "status") else "right")
    for row in rows(report):
        table.add_row(*row)
    console.print(table)
    for n in notes(report):
        console.print(n, style="yellow" if n in report["problems"] else None)


def markdown(report: dict[str, Any]) -> str:
    cols = columns(report)
    lines = [f"**{_title(report)}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    lines += [""] + [f"- {n}" for n in notes(report)]
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    lines += [
        f"- machine: {m.get('gpu') or 'CPU'}"
        + (f" (driver {m['driver']})" if m.get("driver") else "")
        + f", Python {m['python']}; {versions}",
        "- command: `" + " ".join(m["command"]) + "`",
    ]
    env = m.get("environment") or {}
    if env:
        lines.append("- environment: " + ", ".join(f"`{k}={v}`" for k, v in env.items()))
    lines.append("")
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    """Bar chart of tokens/s per system, each bar labelled with its loss and ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["systems"] if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(ok) + 2), 4.2))
    bars = ax.bar(
        [r["system"] + (f" x{r['devices']}" if report.get("scaling") else "") for r in ok],
        [r["target_tokens_per_s"] if _real_length(report) else r["tokens_per_s"] for r in ok],
        color=["#888888" if r["system"].startswith("hf-") else "#3b6fb6" for r in ok],
    )
    for bar, r in zip(bars, ok):
        label = f"loss {r['loss']:.4f}"
        if r.get("ratio_to_hf_reference") is not None:
            label += f"\n{r['ratio_to_hf_reference']:.2f}× hf-ref"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("real target tokens / s" if _real_length(report) else "tokens / s")
    ax.set_title(_title(report), fontsize=8, wrap=True)
    ax.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "chart": out_dir / "chart.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["markdown"].write_text(markdown(report))
    chart(report, paths["chart"])
    return paths
