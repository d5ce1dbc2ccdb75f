"""Everything a bench results JSON turns into: the .md tables, the .png panels, the per-op summary
lines and the README section (python bench/render_readme.py). Pure functions of the JSON, so the
README can be regenerated and checked without running anything."""

import contextlib
import math
import statistics
import sys

OURS = "fgreid"
ROOFLINE = "% of the measured copy bandwidth"


def echo(message):
    """Prints a line without breaking the progress bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(message, flush=True)
        return
    tqdm.write(message, file=sys.stderr)


@contextlib.contextmanager
def progress(total):
    """A progress bar over cases with an ETA (tqdm), or a no-op when tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        class _Silent:
            def update(self, n=1):
                pass

            def set_postfix_str(self, *args, **kwargs):
                pass

        yield _Silent()
        return
    interactive = sys.stderr.isatty()
    with tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True, mininterval=0.5 if interactive else 30,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} cases [{elapsed}<{remaining}] {postfix}") as bar:
        yield bar


def fmt(v, spec, suffix=""):
    return "—" if v is None else format(v, spec) + suffix


def _is_ours(provider):
    return provider.startswith(OURS)


def header(meta):
    v = meta["versions"]
    parts = [meta["device"], f"threads {', '.join(meta['threads']) or '—'}" if meta["device_type"] == "cpu" else None,
             f"torch {v['torch']}", f"CUDA {v['cuda']}" if meta["device_type"] == "cuda" and v.get("cuda") else None,
             f"Python {v['python']}", f"fgreid_ops {v['fgreid_ops']}" + (f" ({meta['commit']})" if meta.get("commit") else ""),
             meta["date"][:10], f"{meta['size']} size", f"{meta['seconds']:.0f} s"]
    return ", ".join(p for p in parts if p)


def caveats(meta):
    out = []
    if meta.get("machine_shared"):
        load = meta.get("loadavg_1min") or {}
        out.append(f"Taken on a machine shared with other jobs (1-min load {fmt(load.get('start'), '.1f')} at the start, "
                   f"{fmt(load.get('end'), '.1f')} at the end, {meta['cpu_count']} cores): provisional numbers.")
    if meta.get("stopped_by_time_budget"):
        out.append(f"Stopped by its time budget ({meta['time_budget']:.0f} s): {meta['cases_run']} of "
                   f"{meta['cases_planned']} cases ran.")
    if meta.get("failures"):
        out.append(f"{len(meta['failures'])} provider(s) failed: " + "; ".join(
            f"{f['op']} {f['config']} {f['mode']} {f['provider']}" for f in meta["failures"]))
    return out


def has_bandwidth(data):
    """Whether the rows carry % of a measured copy bandwidth (CUDA runs; CPU runs since it is measured there)."""
    return any(r.get("pct_peak_bw") is not None for r in data["results"])


def bandwidth_text(meta):
    """What % BW is measured against, in words."""
    if meta["device_type"] == "cuda":
        return (f" % BW is that over the measured device-copy bandwidth ({meta['peak_bandwidth_gbps']:.0f} GB/s)."
                if meta.get("peak_bandwidth_gbps") else "")
    copy, fresh = meta.get("copy_bandwidth_gbps"), meta.get("fresh_copy_bandwidth_gbps") or {}
    if not copy:
        return ""
    per_threads = "; ".join(f"{t} thread{'s' if t != '1' else ''}: {gbps:.1f} GB/s"
                            + (f", into fresh memory {fresh[t]:.1f} GB/s" if t in fresh else "") for t, gbps in copy.items())
    return (f" % BW is that over the measured copy bandwidth into an existing buffer ({per_threads}). A copy into "
            "freshly allocated memory pays a page fault per page: that bounds an op that returns a new tensor.")


def markdown(data):
    meta, rows = data["meta"], data["results"]
    cuda = meta["device_type"] == "cuda"
    bw = has_bandwidth(data)
    lines = [f"# fgreid_ops benchmark — {meta['device']}", "", header(meta), ""]
    lines += [f"> {c}" for c in caveats(meta)] + ([""] if caveats(meta) else [])
    lines += [f"Command: `{meta['command']}`.", "",
              "Speedups are ratios of medians in the same run (higher is better). "
              "GB/s counts the bytes an ideal kernel moves." + bandwidth_text(meta), ""]
    op_rows = [r for r in rows if not r.get("items_per_s")]
    if op_rows:
        head = "| op | config | mode | threads | provider | median ms | p20–p80 ms | GB/s | vs eager | vs compile |"
        head += (" % BW |" if bw else "") + (" peak MiB |" if cuda else "")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in op_rows:
            line = (f"| {r['op']} | {r['config']} | {r['mode']} | {r['threads']} | {r['provider']} | {r['median_ms']:.3f} | "
                    f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f} | {fmt(r['gbps'], '.1f')} | {fmt(r['vs_eager'], '.2f', '×')} | "
                    f"{fmt(r['vs_compile'], '.2f', '×')} |")
            if bw:
                line += f" {fmt(r.get('pct_peak_bw'), '.0f')} |"
            if cuda:
                line += f" {fmt(r.get('peak_mib'), '.0f')} |"
            lines.append(line)
    model_rows = [r for r in rows if r.get("items_per_s")]
    if model_rows:
        lines += ["", "| model | config | threads | provider | img/s | peak MiB | vs eager | vs compile |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in model_rows:
            lines.append(f"| {r['op']} | {r['config']} | {r['threads']} | {r['provider']} | {r['items_per_s']:.1f} | "
                         f"{fmt(r.get('peak_mib'), '.0f')} | {fmt(r['vs_eager'], '.2f', '×')} | "
                         f"{fmt(r['vs_compile'], '.2f', '×')} |")
    notes = sorted({(r["op"], r["config"], r["note"]) for r in rows if r.get("note")})
    if notes:
        lines += ["", "Notes:", ""] + [f"- {op} {config}: {note}" for op, config, note in notes]
    return "\n".join(lines) + "\n"


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


def op_summary(data):
    """{(op, provider): {mode: (median % BW, geomean × compile, geomean × eager, cases)}} over our
    providers, all threads together."""
    out = {}
    for r in data["results"]:
        if _is_ours(r["provider"]):
            out.setdefault((r["op"], r["provider"]), {}).setdefault(r["mode"], []).append(r)
    summary = {}
    for key, modes in out.items():
        summary[key] = {}
        for mode, rs in modes.items():
            bw = [r["pct_peak_bw"] for r in rs if r.get("pct_peak_bw") is not None]
            summary[key][mode] = (statistics.median(bw) if bw else None, _geomean(r["vs_compile"] for r in rs),
                                  _geomean(r["vs_eager"] for r in rs), len(rs))
    return summary


def summary(data):
    """One line per op (and our provider): % of copy bandwidth, × torch.compile, × eager, forward
    and forward+backward (median % BW and geometric-mean speedups over the op's cases)."""
    lines = [f"{header(data['meta'])}"] + caveats(data["meta"])
    width = max([len(f"{op} [{p}]") for op, p in op_summary(data)] or [10])
    for (op, provider), modes in sorted(op_summary(data).items()):
        parts = []
        for mode in ("fwd", "fwd+bwd"):
            if mode in modes:
                bw, vc, ve, n = modes[mode]
                bw_text = f"{fmt(bw, '.0f', '% BW')}, " if bw is not None else ""
                parts.append(f"{mode}: {bw_text}{fmt(vc, '.2f', '× compile')}, {fmt(ve, '.2f', '× eager')} ({n} cases)")
        lines.append(f"{op + ' [' + provider + ']':<{width}}  " + " | ".join(parts))
    return "\n".join(lines)


def readme_section(data, results_path):
    """The README table: per case, our speedup vs eager / vs torch.compile, forward and
    forward+backward (models: img/s)."""
    meta, rows = data["meta"], data["results"]
    lines = [f"`{results_path}`: {header(meta)}."]
    lines += [f"**{c}**" for c in caveats(meta)]
    many_threads = len(meta["threads"]) > 1
    cells = {}
    for r in rows:
        if _is_ours(r["provider"]):
            key = (r["op"], r["config"], r["provider"], r["threads"])
            cells.setdefault(key, {})[r["mode"]] = r
    bw = has_bandwidth(data)
    lines += ["", "| op | case | " + ("threads | " if many_threads else "") + "provider | forward ×eager / ×compile | "
              "forward+backward ×eager / ×compile |" + (" % copy BW fwd / fwd+bwd |" if bw else ""),
              "|---|---|" + ("---|" if many_threads else "") + "---|---|---|" + ("---|" if bw else "")]
    for (op, config, provider, threads), modes in cells.items():
        def pair(mode):
            r = modes.get(mode)
            if r is None:
                return "—"
            if r["vs_eager"] is None and r["vs_compile"] is None:
                text = f"{r['median_ms']:.1f} ms, no baseline"
            else:
                text = f"{fmt(r['vs_eager'], '.2f', '×')} / {fmt(r['vs_compile'], '.2f', '×')}"
            return text + (f" ({r['items_per_s']:.1f} img/s)" if r.get("items_per_s") else "")
        line = f"| {op} | {config} | " + (f"{threads} | " if many_threads else "") + f"{provider} | {pair('fwd')} | {pair('fwd+bwd')} |"
        if bw:
            line += " " + " / ".join(fmt((modes.get(m) or {}).get("pct_peak_bw"), ".0f", "%") for m in ("fwd", "fwd+bwd")) + " |"
        lines.append(line)
    return "\n".join(lines)


def plot(data, path):
    """One panel per op: speedup of our providers vs eager and vs torch.compile per case (log
    axis, 1× line); on CUDA one more panel: % of the measured copy bandwidth per case."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        echo("matplotlib not installed: no chart written")
        return None
    rows = [r for r in data["results"] if _is_ours(r["provider"]) and (r["vs_eager"] or r["vs_compile"])]
    if not rows:
        return None
    meta = data["meta"]
    many_threads = len(meta["threads"]) > 1
    panels = {}
    for r in rows:
        panels.setdefault(r["op"], []).append(r)
    roofline = [r for r in rows if r.get("pct_peak_bw") is not None]
    if roofline:
        panels[ROOFLINE] = roofline
    compile_bw = {(r["op"], r["config"], r["mode"], r["threads"]): r.get("pct_peak_bw")
                  for r in data["results"] if r["provider"] == "compile"}

    def label(r, with_provider, with_op=False):
        text = (f"{r['op']} " if with_op else "") + f"{r['config']} {r['mode']}"
        if many_threads:
            text += f" [{r['threads']}t]"
        if with_provider:
            text += f" {r['provider'].replace('fgreid-', '')}"
        return text

    names = list(panels)
    ncols = 2 if len(names) > 1 else 1
    per_col = [[] for _ in range(ncols)]
    for name in sorted(names, key=lambda n: -len(panels[n])):  # balance the columns' heights
        min(per_col, key=lambda col: sum(len(panels[n]) + 4 for n in col)).append(name)
    per_col = [[n for n in names if n in col] for col in per_col]
    dpi = 100
    bar_in = 0.16
    col_heights = [sum(len(panels[n]) * bar_in + 0.9 for n in col) for col in per_col]
    height = min(max(col_heights) + 0.8, 19.9)  # at most 1990 px tall
    fig = plt.figure(figsize=(16, height), dpi=dpi)
    grid = fig.add_gridspec(1, ncols, wspace=0.55)
    for c, col in enumerate(per_col):
        sub = grid[0, c].subgridspec(len(col), 1, height_ratios=[len(panels[n]) + 4 for n in col], hspace=0.9)
        for i, name in enumerate(col):
            ax = fig.add_subplot(sub[i, 0])
            rs = panels[name]
            multi = len({r["provider"] for r in rs}) > 1
            y = list(range(len(rs)))
            if name != ROOFLINE:
                for offset, key, color, text in ((-0.2, "vs_eager", "tab:blue", "vs eager"),
                                                 (0.2, "vs_compile", "tab:orange", "vs torch.compile")):
                    bars = ax.barh([v + offset for v in y], [r[key] or 0 for r in rs], height=0.4, color=color,
                                   label=text)
                    ax.bar_label(bars, labels=[_times(r[key]) for r in rs], fontsize=5,
                                 padding=1)
                ax.set_xscale("log")
                values = [v for r in rs for v in (r["vs_eager"], r["vs_compile"]) if v]
                low, high = min(0.5, min(values) / 1.5), max(2.0, max(values) * 2.5)
                ax.set_xlim(low, high)
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if high / low < 200 else (1.0,)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.axvline(1.0, color="k", lw=1)
                ax.set_xlabel("speedup of fgreid_ops (×, log; > 1 is faster)", fontsize=7)
            else:
                ours_bw = [r["pct_peak_bw"] for r in rs]
                theirs = [compile_bw.get((r["op"], r["config"], r["mode"], r["threads"])) or 0 for r in rs]
                bars = ax.barh([v - 0.2 for v in y], ours_bw, height=0.4, color="tab:green", label="fgreid_ops")
                ax.bar_label(bars, labels=[f"{v:.0f}%" for v in ours_bw], fontsize=5, padding=1)
                ax.barh([v + 0.2 for v in y], theirs, height=0.4, color="tab:gray", label="torch.compile")
                ax.axvline(100.0, color="k", lw=1)
                measured = (f"{fmt(meta.get('peak_bandwidth_gbps'), '.0f')} GB/s" if meta["device_type"] == "cuda" else
                            ", ".join(f"{t}t {v:.1f} GB/s" for t, v in (meta.get("copy_bandwidth_gbps") or {}).items()))
                ax.set_xlabel(f"% of the measured copy bandwidth ({measured}); green fgreid_ops, gray torch.compile",
                              fontsize=7)
                ax.legend(fontsize=6, loc="lower right")
            ax.set_yticks(y, [label(r, multi, name == ROOFLINE) for r in rs], fontsize=6)
            ax.invert_yaxis()
            ax.tick_params(axis="x", labelsize=6)
            ax.set_title(name, fontsize=9, loc="left")
            ax.grid(axis="x", which="both", alpha=0.3)
            if i == 0 and c == 0:
                fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="upper right", ncols=2)
    fig.suptitle(f"fgreid_ops — {header(meta)}", fontsize=9)
    fig.subplots_adjust(left=0.2, right=0.98, top=1 - 0.75 / height, bottom=0.4 / height)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _times(v):
    if not v:
        return ""
    return f"{v:.0f}×" if v >= 10 else f"{v:.1f}×" if v >= 1 else f"{v:.2f}×"



def main(argv=None):
    """python bench/report.py RESULTS.json...: rewrites each file's .md and .png beside it and
    prints its summary (after a change to the rendering, no rerun needed)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", nargs="+")
    args = parser.parse_args(argv)
    for path in args.results:
        with open(path) as f:
            data = json.load(f)
        base = path[:-5] if path.endswith(".json") else path
        with open(base + ".md", "w") as f:
            f.write(markdown(data))
        plot(data, base + ".png")
        print(summary(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
