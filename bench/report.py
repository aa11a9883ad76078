"""Rows of the result table, the ratio and target verdicts, the printed
table and the JSON written under target/bench/.

A row pairs one figure of ours with one baseline figure. Each figure is a
summary of repeated measurements: the median and the spread (min..max over
the repeats). The ratio always reads "how many times better we are": the
baseline over ours for times and sizes, ours over the baseline for rates.
Above 1 we win; below 1 the baseline wins.
"""

import os
import platform
import subprocess
import time

from lib import OUT_DIR, ROOT, write_json


class Row:
    """One line of the table."""

    def __init__(self, scenario, metric, unit, better, ours=None, ours_note=None,
                 baseline=None, base=None, base_note=None, target=None, target_of="ours"):
        assert target_of in ("ours", "ratio")
        assert better in ("lower", "higher")
        self.scenario = scenario
        self.metric = metric
        self.unit = unit
        self.better = better
        self.ours = ours            # summary dict or None
        self.ours_note = ours_note  # why ours is missing, or a remark
        self.baseline = baseline    # the baseline's name
        self.base = base            # summary dict or None
        self.base_note = base_note
        self.target = target        # (op, value) such as ("<=", 1.0), or None
        # What the target judges: our median, or the ratio against the
        # baseline (a floor row's "0.9x the ceiling").
        self.target_of = target_of

    def ratio(self):
        if not self.ours or not self.base:
            return None
        o, b = self.ours["median"], self.base["median"]
        if self.better == "lower":
            return b / o if o > 0 else None
        return o / b if b > 0 else None

    def target_met(self):
        if not self.target or not self.ours:
            return None
        op, value = self.target
        x = self.ours["median"] if self.target_of == "ours" else self.ratio()
        if x is None:
            return None
        return {"<=": x <= value, ">=": x >= value}[op]

    def to_json(self):
        return {
            "scenario": self.scenario, "metric": self.metric, "unit": self.unit, "better": self.better,
            "ours": self.ours, "ours_note": self.ours_note, "baseline": self.baseline,
            "base": self.base, "base_note": self.base_note, "ratio": self.ratio(),
            "target": list(self.target) if self.target else None, "target_of": self.target_of,
            "target_met": self.target_met(),
        }


def fmt_num(x):
    if x is None:
        return "-"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_fig(s, note=None):
    if not s:
        return f"not measured ({note})" if note else "not measured"
    if s["n"] > 1 and s["min"] != s["max"]:
        return f"{fmt_num(s['median'])} [{fmt_num(s['min'])}-{fmt_num(s['max'])}]"
    return fmt_num(s["median"])


def fmt_target(row):
    if not row.target:
        return "-", "-"
    op, value = row.target
    met = row.target_met()
    verdict = "n/a" if met is None else ("met" if met else "MISSED")
    shown = f"{value:.2f}x" if row.target_of == "ratio" else fmt_num(value)
    return f"{op} {shown}", verdict


def table(rows):
    """The table as aligned plain text (also valid Markdown)."""
    head = ["#", "metric", "unit", "ours: median [min-max]", "baseline", "baseline: median [min-max]",
            "ratio", "target", "verdict"]
    lines = []
    for r in rows:
        ratio = r.ratio()
        tgt, verdict = fmt_target(r)
        lines.append([
            r.scenario, r.metric, r.unit, fmt_fig(r.ours, r.ours_note), r.baseline or "-",
            fmt_fig(r.base, r.base_note) if r.baseline else "-",
            f"{ratio:.2f}x" if ratio is not None else "-", tgt, verdict,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]

    def fmt(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(fmt(line) for line in lines)
    return "\n".join(out)


def machine():
    """What the run ran on, for the record."""
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 1048576, 1)
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem_gib, "kernel": platform.release(),
        "debian": sh(["cat", "/etc/debian_version"]), "rustc": sh(["rustc", "--version"]),
        "git": sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
        # Tracked files changed but not committed when the run started: the
        # build measured them too.
        "uncommitted": [line.split(None, 1)[1] for line in
                        sh(["git", "-C", ROOT, "status", "--short", "--untracked-files=no"]).splitlines()
                        if len(line.split(None, 1)) == 2],
        "loadavg": os.getloadavg(),
    }


def save(rows, mode, started, extra):
    data = {
        "mode": mode, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1), "machine": machine(),
        "rows": [r.to_json() for r in rows], "details": extra,
    }
    path = os.path.join(OUT_DIR, f"results-{mode}.json")
    write_json(path, data)
    write_json(os.path.join(OUT_DIR, "latest.json"), data)
    m = data["machine"]
    with open(os.path.join(OUT_DIR, f"results-{mode}.md"), "w") as f:
        built = extra.get("machine_at_start", m)
        dirty = f" plus uncommitted changes to {', '.join(built['uncommitted'])}" if built["uncommitted"] else ""
        f.write(f"Built from git {built['git']}{dirty}.\n\n")
        f.write(f"{mode} run of {data['started_utc']}, {data['elapsed_s']:.0f} s.\n\n")
        f.write(f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Linux {m['kernel']}, "
                f"Debian {m['debian']}, {m['rustc']}; load average at the start "
                f"{extra.get('load_before', (0, 0, 0))[0]:.2f}, at the end "
                f"{m['loadavg'][0]:.2f} / {m['loadavg'][1]:.2f} / {m['loadavg'][2]:.2f} (1/5/15 min).\n\n")
        f.write(table(rows) + "\n")
    return path
