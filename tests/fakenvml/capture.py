"""Read the nvidia-smi captures in tests/fixtures/nvidia/captures into plain values.

A capture is one real machine's nvidia-smi output, split into sections by banners:

    ################
    # load :: query-gpu (csv, what the exporter parses)
    # $ nvidia-smi --query-gpu=...
    ################

Only what the fake NVML serves is parsed: the query-gpu CSV row, the -q text (thresholds,
PCIe throughput, processes, MIG devices), -L (MIG profiles and UUIDs), pmon rounds and the
list of symbols libnvidia-ml.so.1 exported on that machine.
"""
import os
import re

CAPTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "fixtures", "nvidia", "captures")

_BANNER = re.compile(r"^#{20,}\n# (.+?)\n((?:# .*\n)*)#{20,}\n", re.M)
_NA = re.compile(r"^\[?(N/A|Not Supported|Insufficient Permissions|Requested functionality has been deprecated"
                 r"|Unknown Error|Not available in WDDM driver model)\]?$")


def path(name):
    return os.path.join(CAPTURES, name + ".txt")


def is_na(value):
    return value is None or bool(_NA.match(value.strip()))


def number(value):
    """'81559 MiB' -> 81559.0, '[N/A]' -> None."""
    if is_na(value):
        return None
    m = re.match(r"^\s*(-?[0-9.]+)", value)
    return float(m.group(1)) if m else None


class Capture:
    def __init__(self, name):
        self.name = name
        with open(path(name), encoding="utf-8") as f:
            text = f.read()
        self.sections = {}
        marks = list(_BANNER.finditer(text))
        for i, m in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            self.sections[m.group(1).strip()] = text[m.end():end]

    def section(self, prefix):
        for title, body in self.sections.items():
            if title.startswith(prefix):
                return body
        raise KeyError(f"{self.name}: no section {prefix!r}")

    def query_gpu(self, state):
        """Rows of the query-gpu CSV as {field: raw text}; field names without units."""
        lines = [l for l in self.section(f"{state} :: query-gpu").splitlines() if l.strip()]
        header = [h.strip().split(" [")[0] for h in lines[0].split(",")]
        rows = []
        for line in lines[1:]:
            values = [v.strip() for v in line.split(", ")]
            rows.append(dict(zip(header, values)))
        return rows

    def query_text(self, state):
        return self.section(f"{state} :: query (-q)")

    def gpu_blocks(self, state):
        """The -q text of each GPU, split at 'GPU 00000000:..' lines."""
        text = self.query_text(state)
        parts = re.split(r"^GPU [0-9A-Fa-f]{8}:", text, flags=re.M)
        return parts[1:]

    def symbols(self):
        try:
            body = self.section("capabilities :: nvml-symbols")
        except KeyError:
            return None
        names = {l.strip() for l in body.splitlines() if l.strip().startswith("nvml")}
        return names or None

    def mig_profiles(self):
        """[(gpu index, mig index, profile, mig uuid)] from nvidia-smi -L."""
        out, gpu = [], None
        for line in self.section("capabilities :: list (-L)").splitlines():
            m = re.match(r"^GPU (\d+):", line)
            if m:
                gpu = int(m.group(1))
                continue
            m = re.match(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (\S+)\)", line)
            if m:
                out.append((gpu, int(m.group(2)), m.group(1), m.group(3)))
        return out

    def pmon_rounds(self, state):
        """pmon -c N output as rounds: [[{gpu, pid, type, sm, mem, enc, dec, name}, ...], ...].

        A field printed as '-' is None. A new round starts when a (gpu, pid) repeats.
        """
        rounds, current, seen = [], [], set()
        for line in self.section(f"{state} :: pmon").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            f = line.split(None, 9)
            if f[1] == "-":
                continue  # idle GPU: no process
            key = (int(f[0]), int(f[1]))
            if key in seen:
                rounds.append(current)
                current, seen = [], set()
            seen.add(key)
            val = lambda s: None if s == "-" else int(s)  # noqa: E731
            current.append({"gpu": key[0], "pid": key[1], "type": f[2], "sm": val(f[3]), "mem": val(f[4]),
                            "enc": val(f[5]), "dec": val(f[6]), "name": f[9].strip() if len(f) > 9 else ""})
        if current:
            rounds.append(current)
        return rounds


def q_value(block, label, section=None):
    """The value of '    Label    : value' in a -q block, optionally inside a titled section."""
    if section is not None:
        m = re.search(rf"^(\s*){re.escape(section)}\s*\n((?:\1\s+.*\n)+)", block, re.M)
        if not m:
            return None
        block = m.group(2)
    m = re.search(rf"^\s*{re.escape(label)}\s*: (.*)$", block, re.M)
    return m.group(1).strip() if m else None


def q_processes(block):
    """[{pid, type, name, used (raw text), gi, ci}] from the 'Processes' section of a -q block."""
    m = re.search(r"^    Processes\s*\n((?:        .*\n)+)", block, re.M)
    if not m or "None" == m.group(1).strip():
        return []
    procs, cur, gi, ci = [], None, None, None
    for line in m.group(1).splitlines():
        key, _, value = line.strip().partition(":")
        key, value = key.strip(), value.strip()
        if key == "GPU instance ID":
            gi = value
        elif key == "Compute instance ID":
            ci = value
        elif key == "Process ID":
            cur = {"pid": int(value), "gi": gi, "ci": ci}
            procs.append(cur)
        elif cur is not None and key == "Type":
            cur["type"] = value
        elif cur is not None and key == "Name":
            cur["name"] = value
        elif cur is not None and key == "Used GPU Memory":
            cur["used"] = value
    return procs


def q_mig_devices(block):
    """[{index, gi, ci, total, reserved, used, free (MiB)}] from 'MIG Device' sections of a -q block."""
    out = []
    for m in re.finditer(r"^    MIG Device\s*\n((?:        .*\n)+)", block, re.M):
        body = m.group(1)
        fb = {k: number(q_value(body, k, "Shared FB Memory Usage")) for k in ("Total", "Reserved", "Used", "Free")}
        out.append({"index": int(q_value(body, "Index")), "gi": int(q_value(body, "GPU Instance ID")),
                    "ci": int(q_value(body, "Compute Instance ID")),
                    "total": fb["Total"], "reserved": fb["Reserved"], "used": fb["Used"], "free": fb["Free"]})
    return out
