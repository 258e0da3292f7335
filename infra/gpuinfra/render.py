"""Human output for sizing answers: a table and a per-GPU memory bar readable at a glance."""

from __future__ import annotations

import os

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gpuinfra.sizing import Evaluation, Survey

BAR_WIDTH = 60
# Piped output (CI logs, `| less`) has no terminal width to honour: rich would fall back to 80 columns and cut
# cells such as `p5en.48xlarge` to `p5en.…`. Lay it out this wide instead (COLUMNS still wins when set).
PIPE_WIDTH = 400
PANEL_WIDTH = 160


def console_for(out) -> Console:
    """A console for OUT: the terminal's width on a terminal, wide enough for any row when piped."""
    is_terminal = hasattr(out, "isatty") and out.isatty()
    columns = os.environ.get("COLUMNS", "")
    width = None if is_terminal else (int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH)
    return Console(file=out, width=width)
SEGMENTS = (("weights", "bold blue"), ("overhead", "magenta"), ("KV cache", "green"), ("free", "dim"))


def memory_bar(evaluation: Evaluation, width: int = BAR_WIDTH) -> Text:
    """weights | overhead | KV | free, proportional to the GPU's total memory."""
    per_gpu = evaluation.per_gpu
    total = per_gpu.total_gib
    reserved = max(0.0, total - per_gpu.usable_gib)
    values = [per_gpu.weights_gib, per_gpu.overhead_gib, per_gpu.kv_cache_gib, reserved]
    over = per_gpu.weights_gib + per_gpu.overhead_gib > per_gpu.usable_gib
    bar = Text()
    used = 0
    for (label, style), value in zip(SEGMENTS, values, strict=True):
        cells = min(width - used, round(width * value / total)) if total else 0
        bar.append("█" * cells if label != "free" else "░" * cells, style=style)
        used += cells
    if used < width:
        bar.append("░" * (width - used), style="dim")
    legend = Text("  ")
    for (label, style), value in zip(SEGMENTS, values, strict=True):
        legend.append(f"■ {label} {value:.1f} GiB  ", style=style)
    if over:
        legend.append(f"✗ weights+overhead exceed usable {per_gpu.usable_gib:.1f} GiB", style="bold red")
    return Text.assemble(bar, f"  {total:g} GiB\n", legend)


def _layout(e: Evaluation) -> str:
    parts = [f"TP {e.tensor_parallel}", f"PP {e.pipeline_parallel}"]
    if e.expert_parallel > 1:
        parts.append(f"EP {e.expert_parallel}")
    if e.data_parallel > 1:
        parts.append(f"DP-attention {e.data_parallel}")
    if e.replicas > 1:
        parts.append(f"{e.replicas} replicas")
    return " · ".join(parts)


def _money(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"${value:,.{digits}f}"


def render_evaluation(e: Evaluation, console: Console) -> None:
    where = e.instance_type or f"{e.gpus_per_node} x {e.gpu}"
    verdict = Text("FITS", style="bold green") if e.feasible else Text("DOES NOT FIT", style="bold red")
    title = Text.assemble(f"{e.model} ({e.precision}, KV {e.kv_cache_dtype}) on {where} x {e.nodes}  ", verdict)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("layout", f"{_layout(e)}  (attention: {e.attention_parallel})")
    table.add_row("request", f"{e.concurrency} x {e.context_tokens:,} tokens")
    table.add_row("capacity", f"{e.max_concurrency_at_context} sequences at full context, "
                               f"{e.max_tokens_in_flight:,} tokens in flight")
    table.add_row("weights", f"{e.weights_gib:,.1f} GiB total; KV {e.kv_cache_bytes_per_token:,} B/token per GPU")
    table.add_row("host", f"RAM ≥ {e.host_ram_gib_required:,.0f} GiB, NVMe ≥ {e.nvme_gib_required:,.0f} GiB, "
                          f"vCPUs ≥ {e.host.vcpus_required}, RDMA {'required' if e.needs_rdma else 'not needed'}")
    table.add_row("decode bound", f"{e.decode_tokens_per_s_bound:,.0f} tok/s single stream, "
                                  f"{e.aggregate_decode_tokens_per_s_bound:,.0f} tok/s at {e.concurrency} concurrent")
    table.add_row("cost", f"{_money(e.cost_per_hour_usd)}/h, {_money(e.cost_per_million_output_tokens_usd)} "
                          "per M output tokens (floor)")
    body = [table, Text(), Text("per GPU", style="bold"), memory_bar(e)]
    for reason in e.reasons:
        body.append(Text(f"✗ {reason}", style="red"))
    for note in e.notes:
        body.append(Text(f"• {note}", style="yellow"))
    body.append(Text("assumptions: " + "; ".join(e.assumptions), style="dim"))
    # A panel is prose: cap it at a readable width (its rows wrap at words; nothing in it is cut).
    console.print(Panel(Group(*body), title=title, title_align="left", width=min(console.width, PANEL_WIDTH)))


def render_survey(result: Survey, console: Console, rejected_limit: int = 12) -> None:
    req = result.request
    console.print(
        f"[bold]{req['model']}[/] {req['precision']}, KV {req['kv_cache_dtype']}, "
        f"{req['concurrency']} x {req['context_tokens']:,} tokens, up to {req['max_nodes']} node(s)"
    )
    sla, load = req.get("sla") or {}, req.get("workload") or {}
    if sla:
        target = [f"≥ {sla['min_stream_tokens_per_s']:g} output tokens/s per stream"
                  + (" (default floor: about reading speed)" if sla.get("floor_is_default") else "")]
        if sla.get("ttft_p99_s"):
            target.append(f"TTFT p99 ≤ {sla['ttft_p99_s']:g} s")
        console.print(f"SLA: {', '.join(target)}; load: {load.get('concurrency')} streams, "
                      f"{load.get('input_tokens'):,} in / {load.get('output_tokens'):,} out")
    if result.options:
        table = Table(title="Meet the SLA, cheapest first", title_justify="left")
        for column in ("instance", "nodes", "layout", "weights/GPU", "KV/GPU", "max seqs", "tok/s/stream",
                       "TTFT s", "$/h", "$/M tok at load"):
            table.add_column(column, justify="right" if column not in ("instance", "layout") else "left")
        for e in result.options:
            steady = e.steady_state
            table.add_row(
                e.instance_type or e.gpu, str(e.nodes), _layout(e), f"{e.per_gpu.weights_gib:.1f}",
                f"{e.per_gpu.kv_cache_gib:.1f}", str(e.max_concurrency_at_context),
                f"{steady.stream_tokens_per_s:,.1f}" if steady else "n/a",
                f"{steady.ttft_s:.2f}" if steady else "n/a", _money(e.cost_per_hour_usd),
                _money(e.cost_per_million_output_tokens_at_load_usd),
            )
        console.print(table)
        best = result.options[0]
        console.print(Text("cheapest: ", style="bold"), memory_bar(best))
        if best.performance and best.performance.basis:
            console.print(Text(f"speed basis ({best.gpu}): {best.performance.basis}", style="dim"))
    else:
        console.print("[bold red]No catalog instance type can serve this request within the SLA.[/]")
    if result.rejected:
        table = Table(title=f"Not feasible or missing the SLA ({len(result.rejected)})", title_justify="left")
        table.add_column("instance")
        table.add_column("nodes", justify="right")
        table.add_column("why not")
        for r in result.rejected[:rejected_limit]:
            table.add_row(r.instance_type, str(r.nodes), r.reasons[0] if r.reasons else "")
        if len(result.rejected) > rejected_limit:
            table.add_row("…", "", f"{len(result.rejected) - rejected_limit} more: use --json for all")
        console.print(table)
