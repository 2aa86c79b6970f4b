"""The verdict derived from SPEC.md, from the case alone.

`decide(case)` computes what ../shared/SPEC.md asks for the case: a
configuration error, or the route (proxy or direct) and the proxy, applying
every rule of SPEC (§1 settings, §2 proxy URLs, §3 no_proxy, §4 routes, §5
purposes, §6 federation's https_proxy). Where SPEC differs from Synapse the
decision names the rule that fired (keys of rules.NAMED, each citing its SPEC
row). The harness then makes SPEC's reference observation with Synapse's own
client for the purpose, told the route SPEC decided (so lists, blocklisting,
request lines are still Synapse's), and rules.adjust turns the CONNECT form and
credentials into SPEC's. `judge()` accepts egress when it matches that
reference: "agree" when it matches Synapse too, "documented" otherwise. A
case's `differs` is only an assertion that the named rule fires.
"""

import ipaddress
from urllib.parse import urlsplit

import rules

NEVER_PROXIED = ("appservice", "identity_server", "replication", "redis")
HTTPS_ONLY = ("federation", "key_fetch")


class SpecError(Exception):
    """SPEC asks for a configuration error."""


# ---------------------------------------------------------------- §1 settings


def environment(env):
    """Python urllib.getproxies_environment on the case's environment, in its
    order (SPEC §1 names these semantics)."""
    proxies = {}
    for name, value in env.items():
        lname = name.lower()
        if value and lname[-6:] == "_proxy":
            proxies[lname[:-6]] = value
    if "REQUEST_METHOD" in env:
        proxies.pop("http", None)
    for name, value in env.items():
        if name[-6:] == "_proxy":
            lname = name.lower()
            if value:
                proxies[lname[:-6]] = value
            else:
                proxies.pop(lname[:-6], None)
    return proxies


def settings(case, fired):
    """(http_proxy, https_proxy, no_proxy entries, where) per SPEC §1."""
    config = case.get("config", {})
    env = environment(case.get("env", {}))
    out = {}
    where = {}
    for key, scheme in (("http_proxy", "http"), ("https_proxy", "https")):
        if key in config:
            value = config[key]
            if value is not None and not isinstance(value, str):
                raise SpecError(f"{key} is not a string")
            out[scheme] = value or None
            where[scheme] = key
        else:
            out[scheme] = env.get(scheme)
            where[scheme] = "environment"
    if "no_proxy_hosts" in config:
        value = config["no_proxy_hosts"]
        if value is None:
            no = []
            if env.get("no"):
                fired.append("no-proxy-hosts-null")
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError("no_proxy_hosts is not a list of strings")
        else:
            no = value
    else:
        no = env["no"].split(",") if env.get("no") else []
    return out["http"], out["https"], no, where


# ---------------------------------------------------------------- §2 proxy URLs


def parse_proxy(value):
    """(scheme, host, port) of a proxy URL per SPEC §2, or SpecError."""
    if "://" in value:
        scheme, rest = value.split("://", 1)
        scheme = scheme.lower()
    else:
        scheme, rest = "http", value
    if scheme not in ("http", "https"):
        raise SpecError(f"scheme {scheme} is not supported")
    netloc = rest
    for stop in "/?#":
        netloc = netloc.split(stop, 1)[0]
    hostport = netloc.rsplit("@", 1)[-1]
    if hostport.startswith("["):
        host, sep, after = hostport[1:].partition("]")
        if not sep:
            raise SpecError("unclosed bracket")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SpecError("not an IPv6 address in brackets") from None
        if after and not after.startswith(":"):
            raise SpecError("junk after the bracket")
        port = after[1:] if after else None
    elif hostport.count(":") > 1:
        raise SpecError("IPv6 host without brackets")
    else:
        host, sep, port = hostport.partition(":")
        port = port if sep else None
    if not host:
        raise SpecError("empty host")
    if port is None:
        port = 1080
    else:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SpecError("bad port")
        port = int(port)
    return scheme, host.lower(), port


# ---------------------------------------------------------------- §3 no_proxy


def _addr(text):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_entry(raw):
    """(kind, value, port, features) of a no_proxy entry per SPEC §3, or None
    when unparseable (skipped). kind: 'net', 'ip' or 'name'."""
    entry = raw.strip().lower()
    features = set()
    if not entry:
        return None
    if entry.startswith("*."):
        entry = entry[1:]
        features.add("no-proxy-wildcard")
    port = None
    if entry.startswith("["):
        inner, sep, after = entry[1:].partition("]")
        if not sep:
            return None
        if after:
            if not after.startswith(":") or not after[1:].isdigit():
                return None
            port = int(after[1:])
            features.add("no-proxy-port")
        entry = inner
        if "/" not in entry and _addr(entry) is None:
            return None
    elif entry.count(":") == 1:
        host, p = entry.split(":")
        if not p.isdigit():
            return None
        entry, port = host, int(p)
        features.add("no-proxy-port")
    if "/" in entry:
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return None
        return "net", net, port, features | {"no-proxy-cidr"}
    addr = _addr(entry)
    if addr is not None:
        return "ip", addr, port, features | {"no-proxy-ip-address"}
    entry = entry.lstrip(".")
    if entry.endswith("."):
        entry = entry.rstrip(".")
        features.add("no-proxy-trailing-dot")
    if not entry:
        return None
    return "name", entry, port, features


def spec_bypass(entries, host, port):
    """(bypassed, features of the entry that matched) per SPEC §3."""
    if ",".join(entries).strip() == "*":
        return True, {"no-proxy-star-spaces"}
    host = host.strip("[]").lower()
    features = set()
    if host.endswith("."):
        host = host.rstrip(".")
        features.add("no-proxy-trailing-dot")
    haddr = _addr(host)
    for raw in entries:
        parsed = parse_entry(raw)
        if parsed is None:
            continue
        kind, value, eport, efeatures = parsed
        if eport is not None and eport != port:
            continue
        if kind == "net":
            hit = haddr is not None and haddr.version == value.version and haddr in value
        elif kind == "ip":
            hit = haddr is not None and haddr == value
        else:
            hit = haddr is None and (host == value or host.endswith("." + value))
        if hit:
            return True, features | efeatures
    return False, features | {f for e in entries if (p := parse_entry(e)) for f in p[3]}


def python_bypass(entries, host):
    """Synapse's decision (urllib.proxy_bypass_environment on the host)."""
    from urllib.request import proxy_bypass_environment

    return bool(proxy_bypass_environment(host, proxies={"no": ",".join(entries)}))


# ---------------------------------------------------------------- lists

NEW_SPELLINGS = {"ip_range_blocklist": "ip_range_blacklist", "ip_range_allowlist": "ip_range_whitelist",
                 "url_preview_ip_range_blocklist": "url_preview_ip_range_blacklist",
                 "url_preview_ip_range_allowlist": "url_preview_ip_range_whitelist",
                 "federation_ip_range_blocklist": "federation_ip_range_blacklist"}


def spec_yaml(yaml):
    """homeserver.yaml as SPEC reads it (README differences: the *_blocklist and
    *_allowlist spellings are read too), in the spelling Synapse reads."""
    out = dict(yaml)
    for new, old in NEW_SPELLINGS.items():
        if new in out:
            value = out.pop(new)
            out.setdefault(old, value)
    return out


# ---------------------------------------------------------------- the decision


def literal_allowlisted(case, yaml):
    """SPEC gap (README differences): Synapse's federation client checks IP-literal
    server names against the federation blocklist without the allowlist
    (matrixfederationclient.py: BlocklistingAgentWrapper(ip_blocklist=...)); SPEC §7
    says the allowlist punches holes. True when that decides the case."""
    import synapse_purposes  # noqa: PLC0415

    if case.get("purpose", "push") not in HTTPS_ONLY:
        return False
    host = rules.host_port(urlsplit(case["url"]).netloc, 443)[0].strip("[]")
    if _addr(host) is None:
        return False
    block, allow, _ = synapse_purposes.ip_sets(case["purpose"], spec_yaml(yaml))
    return bool(block and allow and host in block and host in allow)


def decide(case, yaml=None):
    """What SPEC asks: {"route": "config_error"} or {"route": "proxy"|"direct",
    "proxy": (scheme, host, port) | None, "proxy_value": str | None}, with
    "fired": the names of the SPEC rules (rules.NAMED) where SPEC differs from
    Synapse for this case."""
    purpose = case.get("purpose", "push")
    fired = []
    if any(key in case.get("config", {}) for key in NEW_SPELLINGS):
        fired.append("blocklist-spelling")
    if yaml is not None and literal_allowlisted(case, yaml):
        fired.append("federation-literal-allowlist")
    try:
        http, https, no, _ = settings(case, fired)
        parsed = {}
        for scheme, value in (("http", http), ("https", https)):
            if value:
                parsed[scheme] = parse_proxy(value)
    except SpecError as e:
        return {"route": "config_error", "why": str(e), "fired": fired + ["proxy-url-errors"]}
    url = urlsplit(case["url"])
    scheme = url.scheme
    host, port = rules.host_port(url.netloc, 443 if scheme == "https" else 80)
    value = {"http": http, "https": https}.get(scheme)
    if purpose == "redis":
        return {"route": "direct", "proxy": None, "proxy_value": None, "fired": fired + ["redis-not-http"]}
    if purpose in HTTPS_ONLY and scheme != "https":
        value = None
    if purpose in NEVER_PROXIED:
        if value and purpose != "replication" and not python_bypass(no, host.strip("[]")):
            fired.append("never-proxied")
        value = None
    if not value:
        return {"route": "direct", "proxy": None, "proxy_value": None, "fired": fired}
    bypass, features = spec_bypass(no, host, port)
    if bypass != python_bypass(no, host.strip("[]")) and "no-proxy-hosts-null" not in fired:
        if not bypass and _addr(host.strip("[]")) is not None:
            # Python compares an IP host with the entries as text (`0.2` matches 127.0.0.2).
            features = features | {"no-proxy-ip-address"}
        fired.extend(sorted(features) or ["no-proxy-differs"])
    if bypass:
        return {"route": "direct", "proxy": None, "proxy_value": None, "fired": fired}
    return {"route": "proxy", "proxy": parsed[scheme], "proxy_value": value, "fired": fired}


def forced_proxy_url(decision):
    """A proxy URL Synapse parses the same, for the reference run."""
    scheme, host, port = decision["proxy"]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def reference(case, decision, obs):
    """SPEC's observation from Synapse's forced observation."""
    if decision["route"] == "config_error":
        return {"route": "config_error", "first_line": None, "proxy_authorization": None, "host": None}, []
    if case.get("purpose") == "redis":
        return {"route": "direct", "first_line": None, "proxy_authorization": None, "host": None}, []
    adjusted, applied = rules.adjust(case, obs)
    if adjusted.get("first_line") == "<TLS ClientHello>":
        # TLS to an https:// proxy: the recorder sees no header.
        adjusted["proxy_authorization"] = obs.get("proxy_authorization")
        applied = [a for a in applied if not a.startswith("SPEC §2")]
    elif adjusted.get("route") == "proxy":
        line = adjusted.get("first_line") or ""
        method, _, rest = line.partition(" ")
        uri, _, version = rest.rpartition(" ")
        if "://" in uri and "/" not in uri.split("://", 1)[1]:
            # SPEC gap (README "Differences from Synapse"): an absolute-form target
            # with an empty path. Synapse sends `GET http://host HTTP/1.1`; SPEC §4's
            # form `GET http://host/path` with the path normalized to `/` (RFC 9112 §3.2.2,
            # RFC 3986 §6.2.3), as egress sends it.
            adjusted["first_line"] = f"{method} {uri}/ {version}"
            applied.append("absolute-form path `/` (SPEC gap, README differences)")
        wanted = rules.spec_basic(decision["proxy_value"])
        if adjusted.get("proxy_authorization") != wanted:
            adjusted["proxy_authorization"] = wanted
    return adjusted, applied


def judge(case, synapse, ours, ref, decision, applied):
    """('agree' | 'documented' | 'disagree', why)."""
    expect = case.get("expect")
    differs = case.get("differs")
    fired = decision["fired"]
    if differs is not None and differs not in rules.NAMED:
        return "disagree", f"unknown rule {differs}"
    if expect is not None and not rules.meets(ours, expect):
        return "disagree", f"egress does not meet expect {expect}"
    if differs is not None and differs not in fired:
        return "disagree", f"rule {differs} does not fire (fired: {fired or 'none'})"
    if not rules.same(ours, ref):
        if rules.same(ours, synapse):
            return "disagree", f"egress does as Synapse, SPEC asks {rules.show(ref)}"
        return "disagree", f"SPEC asks {rules.show(ref)}"
    if rules.same(ours, synapse):
        return "agree", ""
    why = [rules.NAMED.get(f, f) for f in dict.fromkeys(fired)] + applied
    return "documented", "; ".join(why) or "SPEC"
