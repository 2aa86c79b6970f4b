"""Random loopback-only conformance cases (issue 12), from a grammar.

python3 conformance/fuzz_cases.py --seed S --cases N > cases.jsonl

Covers: environment spellings and precedence (lower/upper/mixed case, empty
values, ALL_PROXY, REQUEST_METHOD, variable order), homeserver.yaml overrides,
nulls, empty strings and non-strings; proxy URL forms (no scheme, https://,
default port, path, credentials with percent-encoding, user only, IPv4/IPv6
literals, bad ones); no_proxy mixes (names, suffixes, `*.`, `*`, IPs, CIDR,
ports, case, trailing dots, spaces, unparseable entries); every purpose;
http/https/IPv6/IP-literal targets with and without default ports;
blocklists, allowlists, the federation list and the *_blocklist spellings.
Every name resolves to a loopback address; the harness refuses anything else.
"""

import argparse
import json
import random

RESOLVE = {
    "proxy.test": "127.0.0.1",
    "proxy6.test": "::1",
    "test.com": "127.0.0.2",
    "a.test.com": "127.0.0.2",
    "deep.a.test.com": "127.0.0.2",
    "xtest.com": "127.0.0.2",
    "other.org": "127.0.0.3",
    "v6.test": "::1",
}
PURPOSES = ["push", "url_preview", "phone_home", "recaptcha", "cas", "oidc", "federation",
            "pubkey_validity", "key_fetch", "media", "appservice", "identity_server", "replication", "redis"]
HOSTS = ["test.com", "a.test.com", "deep.a.test.com", "xtest.com", "other.org", "v6.test", "TEST.com",
         "test.com.", "127.0.0.2", "127.0.0.3", "127.1.2.3", "[::1]", "[0:0:0:0:0:0:0:1]"]
PROXY_HOSTS = ["proxy.test", "PROXY.test", "127.0.0.1", "[::1]", "proxy6.test", "127.0.0.5"]
CREDS = ["user:pass@", "user@", "user:@", "us%40er:p%3Ass@", "a%20b:c%2Fd@", ":pass@", "u:p%25@"]
BAD_PROXIES = ["socks5://proxy.test:1080", "socks5h://proxy.test:1080", "ftp://proxy.test:21",
               "http://:3128", "http://proxy.test:99999", "http://proxy.test:abc", "http://::1:3128",
               "http://proxy.test:0"]
NO_PROXY = ["test.com", ".test.com", "*.test.com", "TEST.COM", "test.com.", "xtest.com", "other.org",
            "a.test.com", "test.com:8443", "test.com:9999", "test.com:443", "127.0.0.2", "127.0.0.0/8",
            "127.1.0.0/16", "127.0.0.3/32", "::1", "[::1]", "[::1]:8443", "::1/128", "fd00::/8", "0.2",
            "0:0:0:0:0:0:0:1", "*", "", "  test.com  ", "10.0.0.0/33", "v6.test", "com", ".com",
            "proxy.test", "127.0.0.2:8080"]
LISTS = [["127.0.0.0/8"], ["127.0.0.2/32"], ["127.0.0.3/32"], ["::1/128"], ["127.0.0.2"],
         ["10.0.0.0/8"], ["127.0.0.0/8", "::1/128"]]
ALLOWS = [["127.0.0.2/32"], ["127.0.0.0/8"], ["::1/128"]]


def proxy_url(r):
    if r.random() < 0.08:
        return r.choice(BAD_PROXIES)
    scheme = r.choice(["http://"] * 6 + ["", "https://", "HTTP://"])
    host = r.choice(PROXY_HOSTS)
    creds = r.choice(CREDS) if r.random() < 0.25 else ""
    port = r.choice([":3128", ":3129", ":3128", ""])
    tail = r.choice([""] * 6 + ["/", "/path?x=1"])
    return f"{scheme}{creds}{host}{port}{tail}"


def no_proxy_value(r):
    if r.random() < 0.08:
        return r.choice(["*", " * ", "*,test.com"])
    entries = r.sample(NO_PROXY, r.randint(1, 3))
    return r.choice([",", ", ", " , "]).join(entries)


def target(r, purpose):
    host = r.choice(HOSTS)
    scheme = "https" if purpose in ("federation", "key_fetch") and r.random() < 0.8 else r.choice(["https", "http"])
    port = r.choice([":8443", ":8080", ""]) if r.random() < 0.9 else ":9000"
    path = r.choice(["/", "/path?q=1", "/_matrix/key/v2/server", ""])
    return f"{scheme}://{host}{port}{path}"


def env_for(r):
    env = {}
    for _ in range(r.randint(0, 4)):
        kind = r.choice(["http", "https", "https", "no", "no", "all", "cgi"])
        if kind == "cgi":
            env["REQUEST_METHOD"] = "GET"
            continue
        base = f"{kind}_proxy"
        name = r.choice([base, base.upper(), base.upper(), base.title()])
        if r.random() < 0.1:
            env[name] = ""
        else:
            env[name] = no_proxy_value(r) if kind == "no" else proxy_url(r)
    return env


def config_for(r):
    config = {}
    for key in ("http_proxy", "https_proxy"):
        x = r.random()
        if x < 0.15:
            config[key] = proxy_url(r)
        elif x < 0.2:
            config[key] = None
        elif x < 0.22:
            config[key] = ""
        elif x < 0.23:
            config[key] = 3128
    x = r.random()
    if x < 0.12:
        config["no_proxy_hosts"] = [e for e in no_proxy_value(r).split(",")]
    elif x < 0.16:
        config["no_proxy_hosts"] = None
    elif x < 0.18:
        config["no_proxy_hosts"] = []
    x = r.random()
    if x < 0.05:
        config["federation_ip_range_blacklist"] = r.choice(LISTS)
    elif x < 0.08:
        config["ip_range_blocklist"] = r.choice(LISTS)
    return config


def case(r, i, seed):
    purpose = r.choice(PURPOSES)
    c = {"id": f"fuzz-{seed}-{i}", "url": target(r, purpose), "resolve": RESOLVE}
    env = env_for(r)
    if r.random() < 0.4:
        # Half the time a proxy for the target's scheme and a no_proxy list, so
        # that no_proxy forms are exercised where they decide the route.
        scheme = c["url"].split("://", 1)[0]
        env[r.choice([f"{scheme}_proxy", f"{scheme.upper()}_PROXY"])] = proxy_url(r)
        env[r.choice(["no_proxy", "NO_PROXY"])] = no_proxy_value(r)
    if env:
        c["env"] = env
    config = config_for(r)
    if config:
        c["config"] = config
    c["purpose"] = purpose
    if r.random() < 0.3:
        c["blocklist"] = r.choice(LISTS)
        if r.random() < 0.4:
            c["allowlist"] = r.choice(ALLOWS)
    return c


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--cases", type=int, default=300)
    args = parser.parse_args()
    r = random.Random(args.seed)
    for i in range(args.cases):
        print(json.dumps(case(r, i, args.seed)))


if __name__ == "__main__":
    main()
