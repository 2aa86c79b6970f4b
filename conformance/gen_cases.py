"""Writes conformance/cases.jsonl. Run: python3 conformance/gen_cases.py

Every name resolves (through `resolve`) to a loopback address; the proxy
listens on proxy.test:3128 (or 3129, 1080), origins on 8443 (https) and
8080 (http) unless a case says otherwise.
"""

import json
import os

R = {
    "proxy.test": "127.0.0.1",
    "proxy2.test": "127.0.0.1",
    "test.com": "127.0.0.2",
    "a.test.com": "127.0.0.2",
    "deep.a.test.com": "127.0.0.2",
    "xtest.com": "127.0.0.2",
    "other.org": "127.0.0.3",
    "test.com.": "127.0.0.2",
    "v6.test": "::1",
}
P = "http://proxy.test:3128"
P2 = "http://proxy.test:3129"
HTTPS = "https://test.com:8443/path?q=1"
HTTP = "http://test.com:8080/path?q=1"

cases = []


def case(cid, url, env=None, config=None, purpose=None, blocklist=None, allowlist=None, expect=None, differs=None):
    c = {"id": cid, "url": url, "resolve": R}
    if env:
        c["env"] = env
    if config is not None:
        c["config"] = config
    if purpose:
        c["purpose"] = purpose
    if blocklist is not None:
        c["blocklist"] = blocklist
    if allowlist is not None:
        c["allowlist"] = allowlist
    if expect:
        c["expect"] = expect
    if differs:
        c["differs"] = differs
    cases.append(c)


# ---- A. environment spellings and precedence (SPEC §1)
for target, name in ((HTTPS, "https"), (HTTP, "http")):
    key = f"{name}_proxy"
    case(f"env-{name}-upper", target, {key.upper(): P})
    case(f"env-{name}-lower", target, {key: P})
    case(f"env-{name}-lower-wins", target, {key.upper(): P2, key: P})
    case(f"env-{name}-lower-wins-reversed", target, {key: P, key.upper(): P2})
    case(f"env-{name}-empty-lower-cancels", target, {key.upper(): P, key: ""})
    case(f"env-{name}-empty-upper-ignored", target, {key.upper(): ""})
    case(f"env-{name}-mixed-case", target, {key.title(): P})
    case(f"env-{name}-all-proxy-ignored", target, {"ALL_PROXY": P, "all_proxy": P})
    case(f"env-{name}-ftp-proxy-ignored", target, {"FTP_PROXY": P})
    case(f"env-{name}-no-fallback", target, {("http_proxy" if name == "https" else "https_proxy"): P})
case("env-cgi-drops-upper-http", HTTP, {"REQUEST_METHOD": "GET", "HTTP_PROXY": P})
case("env-cgi-keeps-lower-http", HTTP, {"REQUEST_METHOD": "GET", "http_proxy": P})
case("env-cgi-keeps-https", HTTPS, {"REQUEST_METHOD": "GET", "HTTPS_PROXY": P})
case("env-no-proxy-upper", HTTPS, {"HTTPS_PROXY": P, "NO_PROXY": "test.com"})
case("env-no-proxy-lower-wins", HTTPS, {"HTTPS_PROXY": P, "NO_PROXY": "test.com", "no_proxy": "other.org"})
case("env-no-proxy-empty-lower-cancels", HTTPS, {"HTTPS_PROXY": P, "NO_PROXY": "test.com", "no_proxy": ""})

# ---- B. homeserver.yaml overrides and nulls (SPEC §1)
case("yaml-https-overrides-env", HTTPS, {"HTTPS_PROXY": P2}, {"https_proxy": P})
case("yaml-http-overrides-env", HTTP, {"HTTP_PROXY": P2}, {"http_proxy": P})
case("yaml-https-null", HTTPS, {"HTTPS_PROXY": P}, {"https_proxy": None})
case("yaml-http-null", HTTP, {"HTTP_PROXY": P}, {"http_proxy": None})
case("yaml-https-empty", HTTPS, {"HTTPS_PROXY": P}, {"https_proxy": ""})
case("yaml-only-https", HTTPS, None, {"https_proxy": P})
case("yaml-only-http", HTTP, None, {"http_proxy": P})
case("yaml-one-key-keeps-env-other", HTTP, {"HTTP_PROXY": P}, {"https_proxy": P2})
case("yaml-no-proxy-overrides-env", HTTPS, {"HTTPS_PROXY": P, "NO_PROXY": "test.com"}, {"no_proxy_hosts": ["other.org"]})
case("yaml-no-proxy-bypass", HTTPS, {"HTTPS_PROXY": P}, {"no_proxy_hosts": ["test.com"]})
case("yaml-no-proxy-empty-list", HTTPS, {"HTTPS_PROXY": P, "NO_PROXY": "test.com"}, {"no_proxy_hosts": []})
case("yaml-no-proxy-null", HTTPS, {"HTTPS_PROXY": P, "NO_PROXY": "test.com"}, {"no_proxy_hosts": None},
     expect={"route": "proxy"}, differs="no-proxy-hosts-null")
case("yaml-https-not-string", HTTPS, None, {"https_proxy": 3128}, expect={"route": "config_error"})
case("yaml-http-list", HTTP, None, {"http_proxy": [P]}, expect={"route": "config_error"})
case("yaml-no-proxy-string", HTTPS, {"HTTPS_PROXY": P}, {"no_proxy_hosts": "test.com"}, expect={"route": "config_error"})
case("yaml-no-proxy-number-item", HTTPS, {"HTTPS_PROXY": P}, {"no_proxy_hosts": ["a", 1]}, expect={"route": "config_error"})

# ---- C. proxy URL forms (SPEC §2), for an https and an http target
forms = {
    "no-scheme": "proxy.test:3128",
    "http-scheme": "http://proxy.test:3128",
    "upper-scheme": "HTTP://proxy.test:3128",
    "trailing-slash": "http://proxy.test:3128/",
    "path-ignored": "http://proxy.test:3128/some/path",
    "default-port": "proxy.test",
    "default-port-with-scheme": "http://proxy.test",
    "ipv4": "127.0.0.1:3128",
    "ipv4-default-port": "http://127.0.0.1",
    "ipv6": "[::1]:3128",
    "ipv6-scheme": "http://[::1]:3128",
    "ipv6-default-port": "[::1]",
    "tls-proxy": "https://proxy.test:3128",
    "tls-proxy-default-port": "https://proxy.test",
    "credentials": "http://user:pass@proxy.test:3128",
    "credentials-no-scheme": "user:pass@proxy.test:3128",
    "credentials-percent": "http://us%40er:p%3Ass%2F@proxy.test:3128",
    "credentials-user-only": "http://alice@proxy.test:3128",
    "credentials-empty-password": "http://alice:@proxy.test:3128",
    "credentials-long-user": f"http://{'u' * 75}:secret@proxy.test:3128",
}
for form, value in forms.items():
    case(f"url-{form}-https", HTTPS, {"HTTPS_PROXY": value})
    case(f"url-{form}-http", HTTP, {"HTTP_PROXY": value})
bad = {
    "socks5": "socks5://proxy.test:1080",
    "socks5h": "socks5h://proxy.test:1080",
    "ftp": "ftp://proxy.test",
    "no-host": "http://",
    "port-too-large": "proxy.test:99999",
    "port-not-number": "proxy.test:abc",
    "ipv6-unbracketed": "::1",
    "ipv6-unbracketed-long": "2001:db8::1",
}
for form, value in bad.items():
    case(f"url-bad-{form}", HTTPS, {"HTTPS_PROXY": value}, expect={"route": "config_error"})

# ---- D. no_proxy forms (SPEC §3), https_proxy set
def np(cid, value, url, expect=None, differs=None, port=8443):
    case(f"noproxy-{cid}", url, {"HTTPS_PROXY": P, "NO_PROXY": value}, expect=expect, differs=differs)


np("star", "*", HTTPS)
np("star-spaces", " * ", HTTPS, {"route": "direct"}, "no-proxy-star-spaces")
np("name-exact", "test.com,unused.com", HTTPS)
np("name-subdomain", "test.com,unused.com", "https://a.test.com:8443/")
np("name-deep-subdomain", "test.com", "https://deep.a.test.com:8443/")
np("name-label-boundary", "test.com", "https://xtest.com:8443/")
np("name-upper-host", "test.com", "https://TEST.COM:8443/")
np("name-upper-entry", "TEST.COM", HTTPS)
np("leading-dot", ".test.com", HTTPS)
np("leading-dot-subdomain", ".test.com", "https://a.test.com:8443/")
np("wildcard", "*.test.com", "https://a.test.com:8443/", {"route": "direct"}, "no-proxy-wildcard")
np("spaces", " other.org , test.com ", HTTPS)
np("no-match", "other.org", HTTPS)
np("empty", "", HTTPS)
np("only-commas", ",,", HTTPS)
np("bad-entry-skipped", "10.0.0.0/33,test.com", HTTPS)
np("cidr-v4", "127.1.0.0/16,127.30.0.0/16", "https://127.1.2.3:8443/", {"route": "direct"}, "no-proxy-cidr")
np("cidr-v4-other", "127.30.0.0/16", "https://127.1.2.3:8443/")
np("cidr-v4-edge", "127.30.0.0/16", "https://127.30.255.255:8443/", {"route": "direct"}, "no-proxy-cidr")
np("cidr-v6", "::1/128", "https://[::1]:8443/", {"route": "direct"}, "no-proxy-cidr")
np("cidr-v6-other", "fd00::/8", "https://[::1]:8443/")
np("ip-exact", "127.0.0.2", "https://127.0.0.2:8443/")
np("ip-other", "127.0.0.3", "https://127.0.0.2:8443/")
np("ip-suffix-is-not-a-domain", "0.2", "https://127.0.0.2:8443/", {"route": "proxy"}, "no-proxy-ip-address")
np("ipv6-long-form", "::1", "https://[0:0:0:0:0:0:0:1]:8443/", {"route": "direct"}, "no-proxy-ip-address")
np("ipv6-exact", "::1", "https://[::1]:8443/")
np("port-match", "test.com:8443", HTTPS, {"route": "direct"}, "no-proxy-port")
np("port-other", "test.com:9443", HTTPS)
np("ipv6-port-match", "[::1]:8443", "https://[::1]:8443/", {"route": "direct"}, "no-proxy-port")
np("trailing-dot-entry", "test.com.", HTTPS, {"route": "direct"}, "no-proxy-trailing-dot")
np("trailing-dot-host", "test.com", "https://test.com.:8443/", {"route": "direct"}, "no-proxy-trailing-dot")
np("many-entries", ",".join(f"host{i}.example" for i in range(50)) + ",test.com", HTTPS)
case("noproxy-http-target", HTTP, {"HTTP_PROXY": P, "NO_PROXY": "test.com"})
case("noproxy-http-target-no-match", HTTP, {"HTTP_PROXY": P, "NO_PROXY": "other.org"})
case("noproxy-yaml-list-entries", HTTPS, {"HTTPS_PROXY": P}, {"no_proxy_hosts": ["other.org", ".test.com"]})
case("noproxy-yaml-star", HTTPS, {"HTTPS_PROXY": P}, {"no_proxy_hosts": ["*"]})

# ---- E. every purpose (SPEC §5), both proxies set
both = {"HTTPS_PROXY": P, "HTTP_PROXY": P2}
for purpose in ["push", "url_preview", "phone_home", "recaptcha", "cas", "oidc", "pubkey_validity", "media"]:
    case(f"purpose-{purpose}-https", HTTPS, both, purpose=purpose)
    case(f"purpose-{purpose}-http", HTTP, both, purpose=purpose)
    case(f"purpose-{purpose}-bypass", HTTPS, dict(both, NO_PROXY="test.com"), purpose=purpose)
for purpose in ["federation", "key_fetch"]:
    case(f"purpose-{purpose}-https", "https://test.com:8448/_matrix/key/v2/server", both, purpose=purpose)
    case(f"purpose-{purpose}-http-never-http-proxy", HTTP, both, purpose=purpose)
    case(f"purpose-{purpose}-bypass", "https://test.com:8448/", dict(both, NO_PROXY="test.com"), purpose=purpose)
for purpose in ["appservice", "identity_server"]:
    case(f"purpose-{purpose}-https", HTTPS, both, purpose=purpose, expect={"route": "direct"}, differs="never-proxied")
    case(f"purpose-{purpose}-http", HTTP, both, purpose=purpose, expect={"route": "direct"}, differs="never-proxied")
case("purpose-replication-https", HTTPS, both, purpose="replication")
case("purpose-replication-http", HTTP, both, purpose="replication")
case("purpose-redis", "https://test.com:8443/", both, purpose="redis", expect={"route": "direct"}, differs="redis-not-http")

# ---- F. targets: schemes, ports, IPv6
for url in ["https://test.com/", "http://test.com/", "https://test.com:8443", "http://test.com:8080/a/b?c=d&e=f",
            "https://[::1]:8443/x", "http://[::1]:8080/x", "https://v6.test:8443/", "http://v6.test:8080/",
            "https://127.0.0.2:8443/", "http://127.0.0.2:8080/"]:
    slug = url.replace("://", "-").replace("/", "_").replace(":", "-").replace("[", "").replace("]", "").replace("?", "_")
    case(f"target-{slug}-proxied", url, {"HTTPS_PROXY": P, "HTTP_PROXY": P})
    case(f"target-{slug}-direct", url)

# ---- G. credentials (SPEC §2)
for name, value in {
    "basic": "http://bob:pinkponies@proxy.test:3128",
    "colon-in-password": "http://bob:pink:ponies@proxy.test:3128",
    "at-in-password": "http://bob:p@ss@proxy.test:3128",
    "encoded-all": "http://b%6Fb:p%40%3A%2F%25@proxy.test:3128",
    "unicode-encoded": "http://b%C3%B6b:p%C3%A4ss@proxy.test:3128",
    "tls-proxy-credentials": "https://bob:pinkponies@proxy.test:3128",
}.items():
    case(f"creds-{name}-https", HTTPS, {"HTTPS_PROXY": value})
    case(f"creds-{name}-http", HTTP, {"HTTP_PROXY": value})
case("creds-not-sent-direct", HTTPS, {"HTTPS_PROXY": "http://bob:pw@proxy.test:3128", "NO_PROXY": "test.com"})

# ---- H. blocklist and allowlist (SPEC §7), purpose push
B = ["127.0.0.0/8"]
case("block-literal-proxied-refused", "https://127.0.0.2:8443/", {"HTTPS_PROXY": P}, blocklist=B)
case("block-literal-direct-refused", "https://127.0.0.2:8443/", blocklist=B)
case("block-literal-http-refused", "http://127.0.0.2:8080/", {"HTTP_PROXY": P}, blocklist=B)
case("block-literal-allowlisted", "https://127.0.0.2:8443/", {"HTTPS_PROXY": P}, blocklist=B, allowlist=["127.0.0.2/32"])
case("block-literal-other-range", "https://127.0.0.2:8443/", {"HTTPS_PROXY": P}, blocklist=["10.0.0.0/8"])
case("block-mapped-literal", "https://[::ffff:127.0.0.2]:8443/", {"HTTPS_PROXY": P}, blocklist=B)
case("block-name-direct-refused", HTTPS, blocklist=B)
case("block-name-direct-allowlisted", HTTPS, blocklist=B, allowlist=["127.0.0.2/32"])
case("block-name-direct-other-allowed", HTTPS, blocklist=B, allowlist=["127.0.0.3/32"])
case("block-name-proxied-not-checked", HTTPS, {"HTTPS_PROXY": P}, blocklist=B)
case("block-name-bypassed-refused", HTTPS, {"HTTPS_PROXY": P, "NO_PROXY": "test.com"}, blocklist=B)
case("block-proxy-address-not-checked", HTTP, {"HTTP_PROXY": "http://127.0.0.1:3128"}, blocklist=B)
case("block-v6-literal", "https://[::1]:8443/", {"HTTPS_PROXY": P}, blocklist=["::1/128"])
case("block-v6-name-direct", "https://v6.test:8443/", blocklist=["::1/128"])
case("block-v6-name-proxied", "https://v6.test:8443/", {"HTTPS_PROXY": P}, blocklist=["::1/128"])
case("block-url-preview", HTTPS, purpose="url_preview", blocklist=B)
case("block-federation", "https://127.0.0.2:8448/", {"HTTPS_PROXY": P}, purpose="federation", blocklist=B)
case("block-media-allowlisted", "https://127.0.0.2:8443/", {"HTTPS_PROXY": P}, purpose="media", blocklist=B, allowlist=["127.0.0.0/16"])
case("block-spelling-blocklist", "https://127.0.0.2:8443/", {"HTTPS_PROXY": P},
     config={"ip_range_blocklist": B}, expect={"route": "refused"}, differs="blocklist-spelling")
case("block-spelling-blacklist", "https://127.0.0.2:8443/", {"HTTPS_PROXY": P}, config={"ip_range_blacklist": B},
     expect={"route": "refused"})

# ---- Found by conformance/fuzz (issue 12)
# Synapse's federation client checks IP-literal names without the allowlist; SPEC §7's
# allowlist punches holes (seeds 5 and 6 of the README figures).
case("fuzz-federation-literal-allowlisted", "https://127.0.0.2/_matrix/key/v2/server", {"NO_PROXY": "*, 127.1.0.0/16, 0.2"},
     purpose="federation", blocklist=["127.0.0.2"], allowlist=["127.0.0.2/32"],
     expect={"route": "direct"}, differs="federation-literal-allowlist")
case("fuzz-key-fetch-literal-allowlisted-proxied", "https://127.1.2.3:8080/_matrix/key/v2/server",
     {"https_proxy": ":pass@proxy.test:3128", "no_proxy": "127.0.0.3/32"}, {"no_proxy_hosts": ["*.test.com"]},
     purpose="key_fetch", blocklist=["127.0.0.0/8"], allowlist=["127.0.0.0/8"],
     expect={"route": "proxy"}, differs="federation-literal-allowlist")
case("fuzz-federation-literal-not-allowlisted", "https://127.0.0.2/_matrix/key/v2/server", None,
     purpose="federation", blocklist=["127.0.0.2"], allowlist=["127.0.0.3/32"], expect={"route": "refused"})
# An absolute-form request for an empty path is sent with the path `/`.
case("fuzz-absolute-form-empty-path", "http://test.com:8080", {"HTTP_PROXY": P}, expect={"route": "proxy"})

with open(os.path.join(os.path.dirname(__file__), "cases.jsonl"), "w") as f:
    f.write("# Generated by conformance/gen_cases.py; one case per line.\n")
    for c in cases:
        f.write(json.dumps(c, separators=(", ", ": ")) + "\n")
print(f"{len(cases)} cases")
