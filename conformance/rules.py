"""Where egress is held to the specification instead of to Synapse.

Every rule cites the row of ../shared/SPEC.md that allows the difference.
Two kinds:
  * automatic rules turn Synapse's observation into what the specification
    asks for (the CONNECT line, credentials), and apply to every case;
  * named rules are chosen by a case (`"differs": "<name>"`) together with
    `"expect"`: egress must then match `expect`, whatever Synapse did.
A case with `expect` and no `differs` must satisfy `expect` and agree with Synapse.
"""

import base64
import ipaddress
import re
from urllib.parse import unquote, urlsplit

# Named rules a case can choose.
NAMED = {
    "no-proxy-cidr": "SPEC §3 differs: CIDR ranges in no_proxy (Synapse #19114)",
    "no-proxy-ip-address": "SPEC §3 differs: IP literals compared as addresses",
    "no-proxy-port": "SPEC §3 differs: host:port entries match only that port",
    "no-proxy-trailing-dot": "SPEC §3 differs: a trailing dot is ignored",
    "no-proxy-star-spaces": "SPEC §3: `*` as the whole value (white space trimmed) bypasses everything",
    "no-proxy-wildcard": "SPEC §3 / issue 2: `*.example.com` is `.example.com`",
    "no-proxy-hosts-null": "SPEC §1: a key present with null means none; the environment is not consulted",
    "proxy-url-errors": "SPEC §2: an unusable proxy URL is a configuration error at start-up",
    "never-proxied": "SPEC §5: application services and identity servers never use the proxy",
    "redis-not-http": "SPEC §5: redis is not HTTP and always direct",
    "blocklist-spelling": "README differences: *_blocklist / *_allowlist spellings are read",
    "https-proxy-only": "SPEC §6: federation uses https_proxy only",
    # Issue 12 (found by conformance/fuzz): SPEC gap, README "Differences from Synapse".
    "federation-literal-allowlist": "SPEC §7 / README differences: the allowlist also exempts IP-literal federation names",
}


def host_port(netloc, default):
    """(host, port) of an authority, without user info."""
    netloc = netloc.rsplit("@", 1)[-1]
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif netloc.count(":") == 1:
        host, port = netloc.split(":")
    else:
        host, port = netloc, ""
    try:
        port = int(port) if port else default
    except ValueError:
        port = default
    return host, port


def proxy_values(case):
    """Every proxy value the case may use, from env and config."""
    values = []
    for name, value in case.get("env", {}).items():
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy") and value:
            values.append(value)
    for key in ("http_proxy", "https_proxy"):
        value = case.get("config", {}).get(key)
        if isinstance(value, str) and value:
            values.append(value)
    return values


def roles(case, pairs):
    """(addr, port) -> 'proxy' or 'origin'."""
    resolve = {k.lower(): v for k, v in case.get("resolve", {}).items()}

    def addr_of(host):
        host = host.strip("[]").lower().rstrip(".")
        return resolve.get(host, host)

    out = {}
    url = urlsplit(case["url"])
    if url.hostname:
        host, port = host_port(url.netloc, 443 if url.scheme == "https" else 80)
        out[(normalize_addr(addr_of(host)), port)] = "origin"
    for value in proxy_values(case):
        netloc = value.split("://", 1)[-1].split("/", 1)[0]
        host, port = host_port(netloc, 1080)
        out[(normalize_addr(addr_of(host)), port)] = "proxy"
    return {pair: out.get((normalize_addr(pair[0]), pair[1]), "other") for pair in pairs}


def normalize_addr(addr):
    import ipaddress  # noqa: PLC0415

    try:
        return str(ipaddress.ip_address(addr.strip("[]")))
    except ValueError:
        return addr


def effective_proxy(case, scheme):
    """The proxy value Synapse's rules pick for a target scheme (SPEC §1)."""
    purpose = case.get("purpose", "push")
    if purpose in ("federation", "key_fetch"):
        scheme = "https" if scheme == "https" else None
    if scheme is None:
        return None
    key = f"{scheme}_proxy"
    config = case.get("config", {})
    if key in config:
        return config[key] or None
    env = case.get("env", {})
    found = {}
    for name, value in env.items():
        if name.lower().endswith("_proxy") and value:
            found[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in env:
        found.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy"):
            if value:
                found[name.lower()[:-6]] = value
            else:
                found.pop(name.lower()[:-6], None)
    return found.get(scheme)


def spec_basic(proxy):
    """Proxy-Authorization the specification asks for (SPEC §2: percent-decoded;
    a user without password sends `user:`)."""
    rest = proxy.split("://", 1)[-1]
    netloc = rest.split("/", 1)[0]
    if "@" not in netloc:
        return None
    userinfo = netloc.rsplit("@", 1)[0]
    user, _, password = userinfo.partition(":")
    plain = f"{unquote(user)}:{unquote(password)}"
    return "Basic " + base64.b64encode(plain.encode()).decode()


def adjust(case, s):
    """Synapse's observation as the specification would have it."""
    applied = []
    s = dict(s)
    line = s.get("first_line") or ""
    if line.startswith("CONNECT ") and line.endswith(" HTTP/1.0"):
        authority = line[len("CONNECT "):-len(" HTTP/1.0")]
        host, _, port = authority.rpartition(":")
        if ":" in host and not host.startswith("["):
            authority = f"[{host}]:{port}"
        s["first_line"] = f"CONNECT {authority} HTTP/1.1"
        s["host"] = authority
        applied.append("SPEC §4 differs: CONNECT HTTP/1.1 with Host, IPv6 in brackets")
    if s.get("route") == "proxy":
        scheme = urlsplit(case["url"]).scheme
        proxy = effective_proxy(case, scheme)
        if proxy:
            wanted = spec_basic(proxy)
            if wanted != s.get("proxy_authorization"):
                s["proxy_authorization"] = wanted
                applied.append("SPEC §2 differs: credentials percent-decoded, user without password sends user:")
    return s, applied


def same(a, b):
    keys = ("route", "endpoint", "first_line", "proxy_authorization", "host")
    return all(a.get(k) == b.get(k) for k in keys)


def meets(obs, expect):
    return all(obs.get(k) == v for k, v in expect.items())


def judge(case, s, e):
    """('agree' | 'documented' | 'disagree', why)."""
    expect = case.get("expect")
    differs = case.get("differs")
    if differs is not None and differs not in NAMED:
        return "disagree", f"unknown rule {differs}"
    if expect is not None and not meets(e, expect):
        return "disagree", f"egress does not meet expect {expect}"
    if differs is not None:
        return "documented", NAMED[differs]
    if same(s, e):
        return "agree", ""
    adjusted, applied = adjust(case, s)
    if same(adjusted, e):
        return "documented", "; ".join(applied)
    return "disagree", ""


def show(obs):
    if obs["route"] in ("proxy", "direct"):
        extra = ""
        if obs.get("proxy_authorization"):
            extra = " +auth"
        return f"{obs['route']}: {obs['first_line']}{extra}"
    return obs["route"]


# ---------------------------------------------------------------- the reqwest adapter

# The adapter's documented limitations: each cites the README's table
# ("Adopting egress in a reqwest-based homeserver", "What the adapter does and
# does not reproduce"). The reqwest runner is held to egress's own client;
# a difference is either one of these or a failure.
ADAPTER = {
    "url-normalised": "reqwest parses every URL with the url crate, which lower-cases the host "
    "and writes an IPv6 address in its shortest form; the request line, CONNECT and Host carry "
    "that form (the same destination; README, adopting egress in a reqwest-based homeserver)",
}


def _host_normal(authority):
    """An authority (host[:port]) lower-cased, with any bracketed IPv6 address compressed."""
    if authority is None:
        return None

    def v6(match):
        try:
            return "[" + str(ipaddress.IPv6Address(match.group(1))) + "]"
        except ValueError:
            return match.group(0)

    return re.sub(r"\[([0-9A-Fa-f:.]+)\]", v6, authority).lower()


def _line_normal(line):
    """A request line with only its authority normalised (paths keep their case)."""
    if not line:
        return line
    parts = line.split(" ")
    if len(parts) != 3:
        return line
    method, target, version = parts
    if method == "CONNECT":
        target = _host_normal(target)
    else:
        m = re.match(r"^(https?://)([^/?#]*)(.*)$", target, re.I)
        if m:
            target = m.group(1).lower() + _host_normal(m.group(2)) + m.group(3)
    return " ".join((method, target, version))


def adapter_rule(case, e, r):
    """The ADAPTER rule that explains the difference, or None."""
    normal_e = dict(e, first_line=_line_normal(e.get("first_line")), host=_host_normal(e.get("host")))
    normal_r = dict(r, first_line=_line_normal(r.get("first_line")), host=_host_normal(r.get("host")))
    if same(normal_e, normal_r):
        return "url-normalised"
    return None


def judge_adapter(case, e, r):
    """('agree' | 'documented' | 'disagree', why): reqwest+egress vs egress."""
    if same(e, r):
        return "agree", ""
    name = adapter_rule(case, e, r)
    if name is not None:
        return "documented", ADAPTER[name]
    return "disagree", ""
